// rlm trajectory viewer: expand/collapse everything, and open a log section reached from the
// table of contents. The page has no other script and reads nothing from the log.
document.addEventListener("DOMContentLoaded", function () {
  function setAll(open) {
    document.querySelectorAll("details").forEach(function (d) { d.open = open; });
  }
  function reveal(id) {
    var target = id && document.getElementById(id);
    for (var el = target; el; el = el.parentElement) {
      if (el.tagName === "DETAILS") el.open = true;
    }
  }
  var expand = document.getElementById("expand-all");
  var collapse = document.getElementById("collapse-all");
  if (expand) expand.addEventListener("click", function () { setAll(true); });
  if (collapse) collapse.addEventListener("click", function () { setAll(false); });
  document.querySelectorAll("a[data-open]").forEach(function (a) {
    a.addEventListener("click", function () { reveal(a.getAttribute("data-open")); });
  });
  if (location.hash) reveal(decodeURIComponent(location.hash.slice(1)));
  document.body.dataset.ready = "true";
});
