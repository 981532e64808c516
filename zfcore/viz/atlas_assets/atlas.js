// The feature atlas's one script: keyboard navigation, the jump box and sorting a layer's grid.
// It reads window.ATLAS (layers.js: each layer's feature count) and <link rel=prev|next|up>.
(function () {
  "use strict";
  var root = document.body.getAttribute("data-root") || "";
  function link(rel) {
    var l = document.querySelector('link[rel="' + rel + '"]');
    return l ? l.getAttribute("href") : null;
  }
  var form = document.querySelector("form.jump");
  var input = form && form.querySelector("input");
  var error = form && form.querySelector(".jump-error");
  document.addEventListener("keydown", function (e) {
    if (e.target === input || e.altKey || e.ctrlKey || e.metaKey) return;
    var to = null;
    if (e.key === "ArrowLeft") to = link("prev");
    else if (e.key === "ArrowRight") to = link("next");
    else if (e.key === "u" || e.key === "ArrowUp") to = link("up");
    else if (e.key === "/" && input) { e.preventDefault(); input.focus(); return; }
    if (to) { e.preventDefault(); window.location.href = to; }
  });
  if (form) form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim().replace(/^\/+|\/+$/g, "");
    var parts = text.split("/");
    var layers = (window.ATLAS && window.ATLAS.layers) || {};
    var n = layers[parts[0]];
    if (n === undefined) { error.textContent = "no layer " + JSON.stringify(parts[0]) + " in this atlas"; return; }
    if (parts.length === 1 || parts[1] === "") { window.location.href = root + parts[0] + "/index.html"; return; }
    var f = Number(parts[1]);
    if (parts.length > 2 || !/^\d+$/.test(parts[1]) || f >= n) {
      error.textContent = parts[0] + " has features 0.." + (n - 1); return;
    }
    window.location.href = root + parts[0] + "/" + f + ".html";
  });
  var grid = document.querySelector(".grid");
  document.querySelectorAll("button[data-sort]").forEach(function (b) {
    b.addEventListener("click", function () {
      var key = b.getAttribute("data-sort");
      var items = Array.prototype.slice.call(grid.children);
      items.sort(function (x, y) {
        var a = Number(x.getAttribute("data-" + key)), c = Number(y.getAttribute("data-" + key));
        var i = Number(x.getAttribute("data-index")), j = Number(y.getAttribute("data-index"));
        return key === "index" ? i - j : (c - a) || (i - j);
      });
      items.forEach(function (it) { grid.appendChild(it); });
      document.querySelectorAll("button[data-sort]").forEach(function (o) { o.classList.toggle("on", o === b); });
    });
  });
})();
