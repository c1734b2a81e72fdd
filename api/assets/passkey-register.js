// Registers a passkey on the account page: the browser's authenticator answers the options
// the console fetched from QSA, and the answer goes back in the page's own form (the CSP
// allows no fetch, and none is needed). Without this script the form posts no answer and
// the console says that a passkey needs JavaScript.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("passkey-form");
  const status = document.getElementById("passkey-status");
  if (!form || !status) return;
  const b64 = (buf) =>
    btoa(String.fromCharCode(...new Uint8Array(buf)))
      .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const bytes = (s) => {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0)).buffer;
  };
  form.addEventListener("submit", async (event) => {
    // The second submit (after the authenticator answered) goes through.
    if (form.elements.credential.value) return;
    event.preventDefault();
    if (!window.PublicKeyCredential || !navigator.credentials) {
      status.textContent = "This browser cannot create passkeys.";
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    status.textContent = "Follow your device's prompt to create the passkey…";
    try {
      const pk = JSON.parse(form.dataset.passkeyOptions).publicKey;
      pk.challenge = bytes(pk.challenge);
      pk.user.id = bytes(pk.user.id);
      (pk.excludeCredentials || []).forEach((c) => (c.id = bytes(c.id)));
      const cred = await navigator.credentials.create({ publicKey: pk });
      form.elements.credential.value = JSON.stringify({
        id: cred.id,
        rawId: b64(cred.rawId),
        type: cred.type,
        response: {
          attestationObject: b64(cred.response.attestationObject),
          clientDataJSON: b64(cred.response.clientDataJSON),
        },
      });
      status.textContent = "Saving your passkey…";
      form.submit();
    } catch (e) {
      // Cancelled, timed out, or this authenticator already holds a passkey of the person.
      status.textContent = "No passkey was created: " + e.message;
      button.disabled = false;
    }
  });
});
