// Passkeys on the sign-in pages: asks the server for WebAuthn options, lets the browser's
// authenticator answer, and submits the answer in the page's form (no other script runs).
(function () {
  "use strict";
  const b64 = (buf) =>
    btoa(String.fromCharCode(...new Uint8Array(buf)))
      .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const bytes = (s) => {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0)).buffer;
  };
  async function run(button) {
    const form = document.getElementById(button.dataset.form);
    const status = document.getElementById("passkey-status");
    status.textContent = "";
    try {
      const pending = form.elements.pending ? form.elements.pending.value : null;
      const res = await fetch("/oauth2/passkey/options", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ pending }),
      });
      const body = await res.json();
      if (!res.ok) throw new Error(body.detail || "no passkey can be used");
      const pk = body.options.publicKey;
      pk.challenge = bytes(pk.challenge);
      (pk.allowCredentials || []).forEach((c) => (c.id = bytes(c.id)));
      const cred = await navigator.credentials.get({ publicKey: pk });
      const r = cred.response;
      form.elements.ceremony.value = body.ceremony;
      form.elements.credential.value = JSON.stringify({
        id: cred.id,
        rawId: b64(cred.rawId),
        type: cred.type,
        response: {
          authenticatorData: b64(r.authenticatorData),
          clientDataJSON: b64(r.clientDataJSON),
          signature: b64(r.signature),
          userHandle: r.userHandle ? b64(r.userHandle) : null,
        },
      });
      form.submit();
    } catch (e) {
      status.textContent = "The passkey did not work: " + e.message;
    }
  }
  document
    .querySelectorAll("button[data-passkey]")
    .forEach((b) => b.addEventListener("click", () => run(b)));
})();
