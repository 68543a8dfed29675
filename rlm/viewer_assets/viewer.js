// rlm trajectory viewer: expand/collapse everything; nothing else needs script.
document.addEventListener("DOMContentLoaded", function () {
  function setAll(open) {
    document.querySelectorAll("details").forEach(function (d) { d.open = open; });
  }
  var expand = document.getElementById("expand-all");
  var collapse = document.getElementById("collapse-all");
  if (expand) expand.addEventListener("click", function () { setAll(true); });
  if (collapse) collapse.addEventListener("click", function () { setAll(false); });
  document.body.dataset.ready = "true";
});
