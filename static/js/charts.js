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
        animation: false, parsing: false, maintainAspectRatio: !inBox(canvas),
        scales: { x: { type: "linear", title: { display: true, text: "labelled examples" } },
                  y: { min: 0, max: 1, title: { display: true, text: "cross-validated score" } } },
        plugins: { legend: { labels: { filter: (item) => !item.text.startsWith("_") } } },
      },
    });
  }

  // A canvas inside .chart-box fills the box's height (set in CSS or inline) instead of keeping an aspect ratio.
  function inBox(canvas) {
    return canvas.closest(".chart-box") !== null;
  }

  function readData(canvas) {
    const source = document.getElementById(canvas.dataset.chart + "-data");
    return source ? JSON.parse(source.textContent) : null;
  }

  const fixed = (value, digits = 2) => (value === null || value === undefined ? "–" : value.toFixed(digits));

  function labelDistribution(canvas) {
    const rows = readData(canvas);
    if (!rows || !rows.length) return null;
    return new Chart(canvas, {
      type: "bar",
      data: {
        labels: rows.map((r) => (r.note ? `${r.name} (${r.note})` : r.name)),
        datasets: [{ label: "Labelled examples", data: rows.map((r) => r.count),
                     backgroundColor: rows.map((r) => r.colour), borderRadius: 3 }],
      },
      options: {
        animation: false, maintainAspectRatio: false,
        plugins: { legend: { display: false } },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "examples" } } },
      },
    });
  }

  function annotators(canvas) {
    const rows = readData(canvas);
    if (!rows || !rows.length) return null;
    const hasImports = rows.some((r) => r.imported > 0);
    const datasets = [{ label: "Labelled in LabelHub", data: rows.map((r) => r.in_app), backgroundColor: "#4f6bed" }];
    if (hasImports) {
      datasets.push({ label: "Imported / API", data: rows.map((r) => r.imported), backgroundColor: "#afb8c1" });
    }
    return new Chart(canvas, {
      type: "bar",
      data: { labels: rows.map((r) => r.name), datasets },
      options: {
        animation: false, maintainAspectRatio: false, indexAxis: "y",
        plugins: { legend: { display: hasImports } },
        scales: { x: { stacked: true, beginAtZero: true, ticks: { precision: 0 } }, y: { stacked: true } },
      },
    });
  }

  // F1 bars with the 95% interval drawn as a thin floating bar [low, high] over each one.
  function classF1(canvas) {
    const rows = readData(canvas);
    if (!rows || !rows.length) return null;
    const datasets = [{ label: "F1", data: rows.map((r) => r.f1), backgroundColor: "rgba(79,107,237,0.55)",
                        grouped: false, order: 2, borderRadius: 3 }];
    if (rows.some((r) => r.low !== null)) {
      datasets.push({ label: "95% interval", data: rows.map((r) => (r.low === null ? null : [r.low, r.high])),
                      backgroundColor: "#1f2328", grouped: false, order: 1, maxBarThickness: 4,
                      categoryPercentage: 1 });
    }
    return new Chart(canvas, {
      type: "bar",
      data: { labels: rows.map((r) => r.label), datasets },
      options: {
        animation: false, maintainAspectRatio: false,
        scales: { y: { min: 0, max: 1, title: { display: true, text: "F1" } } },
        plugins: {
          tooltip: { callbacks: { label: (ctx) => {
            const r = rows[ctx.dataIndex];
            return ctx.datasetIndex === 0
              ? `F1 ${fixed(r.f1)} (precision ${fixed(r.precision)}, recall ${fixed(r.recall)}, ${r.support} labels)`
              : `95% interval ${fixed(r.low)}–${fixed(r.high)}`;
          } } },
        },
      },
    });
  }

  // Reliability diagram: per confidence bin, accuracy against mean confidence; the diagonal is perfect calibration.
  function calibration(canvas) {
    const points = readData(canvas);
    if (!points || !points.length) return null;
    const most = Math.max(...points.map((p) => p.n));
    return new Chart(canvas, {
      type: "scatter",
      data: {
        datasets: [
          { label: "Model", data: points, showLine: true, borderColor: "#4f6bed", backgroundColor: "#4f6bed",
            pointRadius: points.map((p) => 3 + 7 * Math.sqrt(p.n / most)) },
          { label: "Perfect calibration", data: [{ x: 0, y: 0 }, { x: 1, y: 1 }], showLine: true, pointRadius: 0,
            borderColor: "#8c959f", borderDash: [6, 4], borderWidth: 1.5 },
        ],
      },
      options: {
        animation: false, maintainAspectRatio: false,
        scales: { x: { min: 0, max: 1, title: { display: true, text: "confidence" } },
                  y: { min: 0, max: 1, title: { display: true, text: "accuracy" } } },
        plugins: { tooltip: { filter: (item) => item.datasetIndex === 0, callbacks: {
          label: (ctx) => `confidence ${fixed(ctx.raw.x)} → accuracy ${fixed(ctx.raw.y)} (${ctx.raw.n} items)`,
        } } },
      },
    });
  }

  const builders = {
    "learning-curve": learningCurve,
    "dashboard-distribution": labelDistribution,
    "dashboard-annotators": annotators,
    "dashboard-f1": classF1,
    "dashboard-calibration": calibration,
  };
  // Other pages' scripts (loaded after this one, e.g. serving-charts.js) add their builders here.
  window.labelhubChartBuilders = builders;

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
