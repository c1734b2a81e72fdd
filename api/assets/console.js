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
});
