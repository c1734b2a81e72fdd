// Starts Swagger UI on this server's own OpenAPI document. No request leaves the origin: the
// online validator badge is off, and the assets are served by the binary itself.
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#reference",
    // A deep link is an <a> inside the summary <button>: nested controls (axe nested-interactive).
    deepLinking: false,
    validatorUrl: null,
    filter: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    syntaxHighlight: { activated: false },
  });
});
