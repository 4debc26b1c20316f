// Charts from data embedded with json_script; redrawn whenever htmx swaps a panel in.
(function () {
  const charts = new Map();

  function learningCurve(canvas) {
    const source = document.getElementById("learning-curve-data");
    if (!source) return null;
    const points = JSON.parse(source.textContent);
    const xy = (key) => points.filter((p) => p[key] !== null).map((p) => ({ x: p.n_labels, y: p[key] }));
    return new Chart(canvas, {
      type: "line",
      data: {
        datasets: [
          { label: "Macro-F1 (95% interval)", data: xy("macro_f1_high"), borderWidth: 0, pointRadius: 0,
            backgroundColor: "rgba(79,107,237,0.15)", fill: "+1" },
          { label: "_low", data: xy("macro_f1_low"), borderWidth: 0, pointRadius: 0, fill: false },
          { label: "Macro-F1", data: xy("macro_f1"), borderColor: "#4f6bed", backgroundColor: "#4f6bed", tension: 0.2 },
          { label: "Accuracy", data: xy("accuracy"), borderColor: "#2da44e", backgroundColor: "#2da44e", tension: 0.2 },
        ],
      },
      options: {
        animation: false, parsing: false,
        scales: { x: { type: "linear", title: { display: true, text: "labelled examples" } },
                  y: { min: 0, max: 1, title: { display: true, text: "cross-validated score" } } },
        plugins: { legend: { labels: { filter: (item) => !item.text.startsWith("_") } } },
      },
    });
  }

  const builders = { "learning-curve": learningCurve };

  function draw(root) {
    if (typeof Chart === "undefined") return;
    root.querySelectorAll("canvas[data-chart]").forEach((canvas) => {
      const old = charts.get(canvas.dataset.chart);
      if (old) old.destroy();
      const build = builders[canvas.dataset.chart];
      const chart = build ? build(canvas) : null;
      if (chart) charts.set(canvas.dataset.chart, chart);
    });
  }

  document.addEventListener("DOMContentLoaded", () => draw(document));
  document.addEventListener("htmx:afterSettle", (event) => draw(event.detail.elt.parentElement || document));
})();
