// Draws the page's charts with uPlot from the JSON the server put in #chart-data. Label text only ever
// reaches the page through textContent (uPlot's legend) or the canvas, never as HTML.
(function () {
  "use strict";
  var PALETTE = ["#2f6fde", "#e5484d", "#12a594", "#f5a524", "#8e4ec6", "#0091ff", "#d6409f", "#3e9b4f",
                 "#e54666", "#5b5bd6", "#ad7f58", "#00a2c7"];
  var data = JSON.parse(document.getElementById("chart-data").textContent || "{}");
  var utc = function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); };

  function format(unit) {
    return function (u, value) {
      if (value == null) { return "–"; }
      if (unit === "ms") { return value >= 1000 ? (value / 1000).toFixed(2) + " s" : value.toFixed(1) + " ms"; }
      if (unit === "ratio") { return (value * 100).toFixed(2) + " %"; }
      return Math.round(value).toLocaleString("en");
    };
  }

  var compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

  // Axis labels: short, so that millions fit beside the chart.
  function axisFormat(unit) {
    var full = format(unit);
    return function (u, value) {
      return unit === "ms" || unit === "ratio" || value == null ? full(u, value) : compact.format(value);
    };
  }

  function hasData(chart) {
    return chart.series.some(function (s) { return s.values.some(function (v) { return v != null; }); });
  }

  function drawChart(element, chart) {
    if (!chart || !hasData(chart)) {
      var empty = document.createElement("div");
      empty.className = "no-data";
      empty.textContent = "No data in this range.";
      element.appendChild(empty);
      element.dataset.rendered = "empty";
      return;
    }
    // Bars for a single series; several series are drawn as lines so that none hides another.
    var bars = chart.kind === "bars" && chart.series.length === 1;
    var labels = chart.x_labels;
    var series = [{ label: labels ? "bucket" : "time", value: labels ? function (u, v) { return labels[v] || ""; } : undefined }];
    chart.series.forEach(function (s, i) {
      var color = PALETTE[i % PALETTE.length];
      series.push({
        label: s.label, stroke: color, width: bars ? 0 : 1.5, fill: bars ? color + "cc" : undefined,
        value: format(chart.unit), spanGaps: false,
        points: { show: !bars && (labels !== undefined || s.values.length < 40) },
        paths: bars ? uPlot.paths.bars({ size: [0.7, 60] }) : undefined
      });
    });
    var opts = {
      width: Math.max(300, element.clientWidth), height: 260, tzDate: utc,
      scales: { x: { time: !labels }, y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.08 : 1]; } } },
      axes: [
        labels ? { values: function (u, ticks) { return ticks.map(function (t) { return labels[t] || ""; }); }, splits: function () { return labels.map(function (_, i) { return i; }); } } : {},
        { values: function (u, ticks) { return ticks.map(function (t) { return axisFormat(chart.unit)(u, t); }); }, size: 70 }
      ],
      series: series,
      legend: { live: true }
    };
    if (labels) { opts.scales.x.range = function () { return [-0.5, labels.length - 0.5]; }; }
    var plot = new uPlot(opts, [chart.x].concat(chart.series.map(function (s) { return s.values; })), element);
    element.dataset.rendered = "chart";
    element.dataset.points = String(chart.series.reduce(function (n, s) {
      return n + s.values.filter(function (v) { return v != null; }).length; }, 0));
    window.addEventListener("resize", function () { plot.setSize({ width: Math.max(300, element.clientWidth), height: 260 }); });
  }

  function drawSpark(element, x, values, unit) {
    var color = element.dataset.series === "error_rate" ? "#e5484d" : "#2f6fde";
    if (!values.some(function (v) { return v != null; })) { element.dataset.rendered = "empty"; return; }
    new uPlot({
      width: 120, height: 28, tzDate: utc, cursor: { show: false }, legend: { show: false }, select: { show: false },
      // A little room below zero, so that a flat line at zero is still drawn.
      scales: { x: { time: true }, y: { range: function (u, min, max) { var top = max > 0 ? max : 1; return [-0.08 * top, top * 1.04]; } } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: color, width: 1.25, fill: color + "22", spanGaps: true, points: { show: false } }]
    }, [x, values], element);
    element.dataset.rendered = "chart";
  }

  document.querySelectorAll("[data-chart]").forEach(function (element) {
    drawChart(element, data[element.dataset.chart]);
  });

  var sparks = document.querySelectorAll(".spark");
  if (sparks.length && data.rows) {
    var draw = function (element) {
      if (element.dataset.rendered) { return; }
      var trend = data.rows[Number(element.dataset.row)];
      drawSpark(element, data.x, trend[element.dataset.series]);
    };
    if ("IntersectionObserver" in window) {
      var observer = new IntersectionObserver(function (entries) {
        entries.forEach(function (entry) { if (entry.isIntersecting) { draw(entry.target); observer.unobserve(entry.target); } });
      }, { rootMargin: "200px" });
      sparks.forEach(function (element) { observer.observe(element); });
    } else {
      sparks.forEach(draw);
    }
  }

  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
})();
