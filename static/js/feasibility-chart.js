// The dashboard's projection chart: the learning curve (cross-validated macro-F1 per model version, with each
// version's 95% interval as a whisker-free band) and the fitted projection with its interval band.
// Registered into charts.js's builders, which draws every canvas[data-chart] on load and after htmx swaps.
(() => {
  function feasibility(canvas) {
    const source = document.getElementById("feasibility-data");
    if (!source) return null;
    const data = JSON.parse(source.textContent);
    const band = data.band || [];
    const xy = (rows, x, y) => rows.filter((r) => r[y] !== null && r[y] !== undefined).map((r) => ({ x: r[x], y: r[y] }));
    return new Chart(canvas, {
      type: "line",
      data: {
        datasets: [
          { label: "Projection interval", data: xy(band, "n", "high"), borderWidth: 0, pointRadius: 0,
            backgroundColor: "rgba(154,103,0,0.15)", fill: "+1" },
          { label: "_low", data: xy(band, "n", "low"), borderWidth: 0, pointRadius: 0, fill: false },
          { label: "Projection", data: xy(band, "n", "value"), borderColor: "#9a6700", borderDash: [6, 4],
            pointRadius: 0, borderWidth: 2 },
          { label: "Macro-F1 (cross-validated)", data: xy(data.points, "n_labels", "macro_f1"),
            borderColor: "#4f6bed", backgroundColor: "#4f6bed", showLine: false, pointRadius: 3 },
        ],
      },
      options: {
        animation: false, parsing: false, maintainAspectRatio: false,
        scales: { x: { type: "linear", title: { display: true, text: "labels" } },
                  y: { suggestedMin: 0, max: 1, title: { display: true, text: "macro-F1" } } },
        plugins: { legend: { labels: { filter: (item) => !item.text.startsWith("_") } } },
      },
    });
  }

  function register() {
    if (window.labelhubChartBuilders) window.labelhubChartBuilders.feasibility = feasibility;
  }
  // After charts.js (a page's scripts block) the builders exist already; before it (the dashboard's region
  // include), they exist by DOMContentLoaded, and the region's canvas only arrives later, by htmx.
  register();
  document.addEventListener("DOMContentLoaded", register);
})();
