// Draws every chart of the page from its figure (Plotly JSON in data-figure); the tables carry the same data.
document.addEventListener("DOMContentLoaded", function () {
  if (typeof Plotly === "undefined") { return; }
  document.querySelectorAll(".chart[data-figure]").forEach(function (el) {
    var figure = JSON.parse(el.dataset.figure);
    Plotly.newPlot(el, figure.data, figure.layout, {responsive: true, displaylogo: false});
  });
});
