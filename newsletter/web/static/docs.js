// Starts Swagger UI on /docs from a file, not an inline script (the Content-Security-Policy allows none).
"use strict";
(function () {
  var el = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({ url: el.dataset.spec, dom_id: "#swagger-ui", deepLinking: true });
})();
