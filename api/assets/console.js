// Progressive enhancement only: every page works without this script.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // A print button where the page offers one (hidden when scripts are off).
  for (const button of document.querySelectorAll("[data-print]")) {
    button.hidden = false;
    button.addEventListener("click", () => window.print());
  }
  // Forms that change something irreversibly ask once more.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Every form says it is working once sent: some actions take seconds (signing, rotating,
  // issuing licences), and a second press would send the action twice. Each form gets an
  // empty live region now, so that filling it later is announced (without role=status,
  // which a page's own notice holds).
  for (const form of document.querySelectorAll("form")) {
    const buttons = form.querySelectorAll("button[type=submit], button:not([type]), input[type=submit]");
    if (!buttons.length) continue;
    const status = document.createElement("span");
    status.className = "busy-status";
    status.setAttribute("aria-live", "polite");
    buttons[buttons.length - 1].after(status);
  }
});
// On the document, so it runs after each form's own listeners (a declined confirmation, the
// passkey script waiting for the authenticator): only a submission that goes ahead is busy.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.getAttribute("aria-busy") === "true") {
    event.preventDefault();
    return;
  }
  if (event.defaultPrevented) return;
  form.setAttribute("aria-busy", "true");
  const buttons = form.querySelectorAll("button, input[type=submit]");
  for (const button of buttons) button.setAttribute("aria-disabled", "true");
  // Disabled only after this event: a disabled button's name and value would not be sent.
  setTimeout(() => {
    for (const button of buttons) button.disabled = true;
  });
  const status = form.querySelector(".busy-status");
  if (status) status.textContent = "Working…";
});
// A page restored from the back-forward cache is not waiting for anything.
window.addEventListener("pageshow", (event) => {
  if (!event.persisted) return;
  for (const form of document.querySelectorAll("form[aria-busy]")) {
    form.removeAttribute("aria-busy");
    for (const button of form.querySelectorAll("button, input[type=submit]")) {
      button.disabled = false;
      button.removeAttribute("aria-disabled");
    }
    const status = form.querySelector(".busy-status");
    if (status) status.textContent = "";
  }
});
