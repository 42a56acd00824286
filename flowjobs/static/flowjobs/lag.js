// Dashboard: the mirror lag of each queue over the time the page has been open, as a
// small line next to its current value. Redis keeps no history of the lag, so the
// page records the values the live updates bring (one per update, the last 60).
(function () {
  "use strict";

  var history = {};
  var WIDTH = 60;
  var HEIGHT = 14;
  var SVG = "http://www.w3.org/2000/svg";

  function record() {
    document.querySelectorAll("td.fj-lag[data-queue]").forEach(function (cell) {
      var value = parseInt(cell.getAttribute("data-lag"), 10);
      if (isNaN(value)) return;
      var queue = cell.getAttribute("data-queue");
      var points = history[queue] || (history[queue] = []);
      points.push(value);
      if (points.length > WIDTH) points.shift();
      draw(cell, points);
    });
  }

  function draw(cell, points) {
    if (points.length < 2) return;
    var peak = Math.max.apply(null, points.concat([1]));
    var step = WIDTH / (points.length - 1);
    var coords = points.map(function (value, index) {
      return (index * step).toFixed(1) + "," + (HEIGHT - 1 - (value / peak) * (HEIGHT - 2)).toFixed(1);
    });
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "fj-lag-spark");
    svg.setAttribute("width", String(WIDTH));
    svg.setAttribute("height", String(HEIGHT));
    svg.setAttribute("viewBox", "0 0 " + WIDTH + " " + HEIGHT);
    var title = document.createElementNS(SVG, "title");
    title.textContent = "mirror lag while this page was open (peak " + peak + " events)";
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", coords.join(" "));
    svg.appendChild(title);
    svg.appendChild(line);
    var old = cell.querySelector("svg.fj-lag-spark");
    if (old) old.remove();
    cell.appendChild(svg);
  }

  document.addEventListener("fj:live-updated", record);
  document.addEventListener("DOMContentLoaded", record);
})();
