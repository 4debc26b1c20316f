// Charts of span (NER) projects' dashboards: entity-F1 learning curve, span errors per label, span precision
// against confidence. Registers builders with charts.js (load this after it), which draws and redraws them.
(function () {
  const builders = window.labelhubChartBuilders;
  if (!builders) return;

  function data(id) {
    const source = document.getElementById(id);
    return source ? JSON.parse(source.textContent) : null;
  }
  const fixed = (value, digits = 2) => (value === null || value === undefined ? "–" : value.toFixed(digits));

  builders["span-learning-curve"] = function (canvas) {
    const points = data("span-learning-curve-data");
    if (!points || !points.length) return null;
    const xy = (key) => points.filter((p) => p[key] !== null && p[key] !== undefined)
      .map((p) => ({ x: p.n_labels, y: p[key], tokens: p.n_tokens }));
    return new Chart(canvas, {
      type: "line",
      data: {
        datasets: [
          { label: "Entity F1 (95% interval)", data: xy("entity_f1_high"), borderWidth: 0, pointRadius: 0,
            backgroundColor: "rgba(79,107,237,0.15)", fill: "+1" },
          { label: "_low", data: xy("entity_f1_low"), borderWidth: 0, pointRadius: 0, fill: false },
          { label: "Entity F1", data: xy("entity_f1"), borderColor: "#4f6bed", backgroundColor: "#4f6bed", tension: 0.2 },
          { label: "Examples entirely right", data: xy("accuracy"), borderColor: "#2da44e", backgroundColor: "#2da44e",
            tension: 0.2 },
        ],
      },
      options: {
        animation: false, parsing: false, maintainAspectRatio: false,
        scales: { x: { type: "linear", title: { display: true, text: "labelled examples" } },
                  y: { min: 0, max: 1, title: { display: true, text: "cross-validated score" } } },
        plugins: {
          legend: { labels: { filter: (item) => !item.text.startsWith("_") } },
          tooltip: { callbacks: { afterLabel: (ctx) => (ctx.raw.tokens ? `${ctx.raw.tokens} tokens labelled` : "") } },
        },
      },
    });
  };

  const ERROR_COLOURS = ["#bf8700", "#8250df", "#cf222e", "#57606a", "#0969da"];

  builders["span-errors"] = function (canvas) {
    const d = data("span-errors-data");
    if (!d || !d.rows.length) return null;
    return new Chart(canvas, {
      type: "bar",
      data: {
        labels: d.rows.map((r) => r.label),
        datasets: d.kinds.map((kind, k) => ({ label: kind, data: d.rows.map((r) => r.counts[k]),
                                                backgroundColor: ERROR_COLOURS[k % ERROR_COLOURS.length] })),
      },
      options: {
        animation: false, maintainAspectRatio: false,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 },
                                             title: { display: true, text: "spans" } } },
      },
    });
  };

  builders["span-precision"] = function (canvas) {
    const points = data("span-precision-data");
    if (!points || !points.length) return null;
    const line = (key) => points.filter((p) => p[key] !== null).map((p) => ({ x: p.threshold, y: p[key] }));
    return new Chart(canvas, {
      type: "line",
      data: {
        datasets: [
          { label: "Precision of the spans kept", data: line("precision"), borderColor: "#4f6bed",
            backgroundColor: "#4f6bed", pointRadius: 2, tension: 0.1 },
          { label: "Share of spans kept", data: line("coverage"), borderColor: "#8c959f", backgroundColor: "#8c959f",
            borderDash: [6, 4], pointRadius: 0 },
        ],
      },
      options: {
        animation: false, parsing: false, maintainAspectRatio: false,
        scales: { x: { type: "linear", min: 0, max: 1, title: { display: true, text: "span confidence threshold" } },
                  y: { min: 0, max: 1 } },
        plugins: { tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: ${fixed(ctx.raw.y)} at ≥ ${fixed(ctx.raw.x)}` } } },
      },
    });
  };
})();
