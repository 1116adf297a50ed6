// Admin pages: drag-and-drop reordering of an issue's articles. Buttons (↑ ↓) do the same without a mouse
// or without script; this only sends the new order through the hidden #reorder-form (htmx posts it).
"use strict";
(function () {
  var dragged = null;

  function list() { return document.querySelector("#article-list[data-sortable]"); }

  document.addEventListener("dragstart", function (e) {
    var li = e.target.closest && e.target.closest("#article-list[data-sortable] > li[data-id]");
    if (!li) return;
    dragged = li;
    li.classList.add("dragging");
    e.dataTransfer.effectAllowed = "move";
    e.dataTransfer.setData("text/plain", li.dataset.id);
  });

  document.addEventListener("dragover", function (e) {
    if (!dragged) return;
    var over = e.target.closest && e.target.closest("#article-list[data-sortable] > li[data-id]");
    if (!over || over === dragged) return;
    e.preventDefault();
    var box = over.getBoundingClientRect();
    var after = e.clientY > box.top + box.height / 2;
    over.parentNode.insertBefore(dragged, after ? over.nextSibling : over);
  });

  document.addEventListener("drop", function (e) { if (dragged) e.preventDefault(); });

  document.addEventListener("dragend", function () {
    if (!dragged) return;
    dragged.classList.remove("dragging");
    dragged = null;
    var ul = list();
    var form = document.getElementById("reorder-form");
    if (!ul || !form) return;
    var ids = Array.prototype.map.call(ul.querySelectorAll("li[data-id]"), function (li) { return li.dataset.id; });
    form.querySelector("input[name=order]").value = ids.join("\n");
    if (window.htmx) { window.htmx.trigger(form, "submit"); } else { form.submit(); }
  });
})();

// htmx leaves 4xx/5xx answers unswapped. Our fragments for a refused change (422/409, an HTML fragment with the
// message) are meant to be shown; any other failed request gets a visible error line instead of a console entry.
(function () {
  function isHtml(xhr) { return /^text\/html/.test(xhr.getResponseHeader("Content-Type") || ""); }

  function showError(text) {
    var main = document.querySelector("main");
    if (!main) return;
    var p = document.getElementById("request-error") || document.createElement("p");
    p.id = "request-error";
    p.className = "flash error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    main.insertBefore(p, main.firstChild);
  }

  document.addEventListener("htmx:beforeSwap", function (e) {
    var xhr = e.detail.xhr;
    if (xhr.status >= 400 && xhr.status < 500 && isHtml(xhr)) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });
  document.addEventListener("htmx:responseError", function (e) {
    var xhr = e.detail.xhr;
    var detail = "";
    try { detail = JSON.parse(xhr.responseText).detail || ""; } catch (_) { detail = ""; }
    showError("The request failed (" + xhr.status + ")" + (detail ? ": " + detail : "") + ". Reload the page and try again.");
  });
  document.addEventListener("htmx:sendError", function () { showError("The server did not answer. Check the connection and try again."); });
})();
