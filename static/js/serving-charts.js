// Charts of the serving pages: accuracy vs coverage, prediction volume, confidence over time.
// Registers builders with charts.js (load this after it), which draws them and redraws after htmx swaps.
(function () {
  const builders = window.labelhubChartBuilders;
  if (!builders) return;

  function data(id) {
    const source = document.getElementById(id);
    return source ? JSON.parse(source.textContent) : null;
  }

  builders["accuracy-coverage"] = function (canvas) {
    const d = data("accuracy-coverage-data");
    if (!d || !d.points.length) return null;
    const curve = d.points.filter((p) => p.accuracy !== null).map((p) => ({ x: p.coverage, y: p.accuracy, t: p.threshold }));
    let chosen = null;
    if (d.threshold !== null) {
      const at = d.points.filter((p) => p.threshold <= d.threshold + 1e-9 && p.accuracy !== null);
      const p = at.length ? at[at.length - 1] : null;
      if (p) chosen = [{ x: p.coverage, y: p.accuracy, t: p.threshold }];
    }
    const datasets = [
      { label: "Accuracy of automated predictions", data: curve, borderColor: "#4f6bed", backgroundColor: "#4f6bed",
        pointRadius: 2, tension: 0.1 },
    ];
    if (chosen) datasets.push({ label: "Current threshold", data: chosen, type: "scatter", pointRadius: 7,
      backgroundColor: "#cf222e", borderColor: "#cf222e" });
    if (d.target !== null) datasets.push({ label: "Target", data: [{ x: 0, y: d.target }, { x: 1, y: d.target }],
      borderColor: "#9a6700", borderDash: [6, 4], pointRadius: 0, borderWidth: 1.5 });
    return new Chart(canvas, {
      type: "line", data: { datasets },
      options: {
        animation: false, parsing: false,
        scales: { x: { type: "linear", min: 0, max: 1, title: { display: true, text: "coverage (share automated)" } },
                  y: { suggestedMin: 0.5, max: 1, title: { display: true, text: "accuracy" } } },
        plugins: { tooltip: { callbacks: { label: (ctx) => {
          const p = ctx.raw; const t = p.t !== undefined ? ` · threshold ${p.t.toFixed(3)}` : "";
          return `coverage ${(p.x * 100).toFixed(1)}% · accuracy ${(p.y * 100).toFixed(1)}%${t}`; } } } },
      },
    });
  };

  builders["prediction-volume"] = function (canvas) {
    const d = data("monitoring-data");
    if (!d || !d.series.length) return null;
    const labels = d.series.map((b) => b.period);
    return new Chart(canvas, {
      data: {
        labels,
        datasets: [
          { type: "bar", label: "Automated", data: d.series.map((b) => b.automated), backgroundColor: "#2da44e", stack: "n" },
          { type: "bar", label: "Uncertain (to a person)", data: d.series.map((b) => b.total - b.automated),
            backgroundColor: "#d4a72c", stack: "n" },
          { type: "line", label: "Automation rate", data: d.series.map((b) => b.automation_rate), yAxisID: "rate",
            borderColor: "#4f6bed", backgroundColor: "#4f6bed", tension: 0.2 },
        ],
      },
      options: {
        animation: false,
        scales: { y: { stacked: true, title: { display: true, text: "predictions" } }, x: { stacked: true },
                  rate: { position: "right", min: 0, max: 1, grid: { drawOnChartArea: false },
                          title: { display: true, text: "automation rate" } } },
      },
    });
  };

  builders["confidence-over-time"] = function (canvas) {
    const d = data("monitoring-data");
    if (!d || !d.series.length) return null;
    const labels = d.series.map((b) => b.period);
    const bins = d.bin_edges.length - 1;
    const datasets = [];
    for (let i = 0; i < bins; i++) {
      const shade = Math.round(40 + (i / (bins - 1)) * 60);
      datasets.push({
        label: `${d.bin_edges[i].toFixed(1)}–${d.bin_edges[i + 1].toFixed(1)}`,
        data: d.series.map((b) => (b.total ? b.bins[i] / b.total : 0)),
        backgroundColor: `hsl(${Math.round((i / (bins - 1)) * 130)}, 55%, ${100 - shade / 1.6}%)`, stack: "c",
      });
    }
    return new Chart(canvas, {
      type: "bar", data: { labels, datasets },
      options: { animation: false,
        scales: { x: { stacked: true }, y: { stacked: true, min: 0, max: 1, title: { display: true, text: "share of predictions" } } },
        plugins: { legend: { position: "right", title: { display: true, text: "confidence" } } } },
    });
  };
})();
