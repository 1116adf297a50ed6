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
