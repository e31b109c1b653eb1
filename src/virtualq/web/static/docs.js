// The API reference: Swagger UI, served by this server (no CDN), started from a file so that the page's
// Content-Security-Policy needs no inline script.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
});
