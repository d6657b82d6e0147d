// Draws the page's charts with uPlot from the JSON the server put in #chart-data. Label text only ever
// reaches the page through textContent (tables, uPlot's legend) or the canvas, never as HTML.
// The Now page (#now) fetches its data again every data-refresh-s seconds and redraws, without a reload,
// the banner of firing alerts (#alerts-banner, rendered by the server on every page) included.
(function () {
  "use strict";
  var PALETTE = ["#2f6fde", "#e5484d", "#12a594", "#f5a524", "#8e4ec6", "#0091ff", "#d6409f", "#3e9b4f",
                 "#e54666", "#5b5bd6", "#ad7f58", "#00a2c7"];
  var BAND_FILL = "rgba(229, 72, 77, 0.14)";
  var MAX_STALLED_ROWS = 20;
  var data = JSON.parse(document.getElementById("chart-data").textContent || "{}");
  var utc = function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); };
  var plots = [];

  function seconds(value) {
    if (value >= 86400) { return (value / 86400).toFixed(1) + " d"; }
    if (value >= 3600) { return (value / 3600).toFixed(1) + " h"; }
    if (value >= 60) { return (value / 60).toFixed(1) + " min"; }
    return value.toFixed(value < 10 ? 1 : 0) + " s";
  }

  function format(unit) {
    return function (u, value) {
      if (value == null) { return "–"; }
      if (unit === "ms") { return value >= 1000 ? (value / 1000).toFixed(2) + " s" : value.toFixed(1) + " ms"; }
      if (unit === "s") { return seconds(value); }
      if (unit === "ratio") { return (value * 100).toFixed(2) + " %"; }
      if (unit === "per minute" || unit === "count") {
        return value >= 100 ? Math.round(value).toLocaleString("en") : String(Math.round(value * 10) / 10);
      }
      return Math.round(value).toLocaleString("en");
    };
  }

  var compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

  // Axis labels: short, so that millions fit beside the chart.
  function axisFormat(unit) {
    var full = format(unit);
    return function (u, value) {
      if (unit === "ms" || unit === "ratio" || unit === "s" || value == null) { return full(u, value); }
      return Math.abs(value) < 10 ? String(Math.round(value * 10) / 10) : compact.format(value);
    };
  }

  // Whether a value of the series has no neighbour with a value: a line would not show it, a point does.
  function hasIsolated(values) {
    return values.some(function (v, i) { return v != null && values[i - 1] == null && values[i + 1] == null; });
  }

  function hasData(chart) {
    return chart.series.some(function (s) { return s.values.some(function (v) { return v != null; }); });
  }

  // Shades the chart's bands (stalled intervals) behind its series; titles them in data-band-labels.
  function bandsPlugin(bands) {
    return {
      hooks: {
        drawClear: [function (u) {
          var ctx = u.ctx;
          ctx.save();
          ctx.fillStyle = BAND_FILL;
          bands.forEach(function (band) {
            var left = Math.max(u.valToPos(band.start, "x", true), u.bbox.left);
            var right = Math.min(u.valToPos(band.end, "x", true), u.bbox.left + u.bbox.width);
            if (right > left) { ctx.fillRect(left, u.bbox.top, Math.max(right - left, 2), u.bbox.height); }
          });
          ctx.restore();
        }]
      }
    };
  }

  function drawChart(element, chart) {
    element.textContent = "";
    if (!chart || !hasData(chart)) {
      var empty = document.createElement("div");
      empty.className = "no-data";
      empty.textContent = "No data in this range.";
      element.appendChild(empty);
      element.dataset.rendered = "empty";
      element.dataset.points = "0";
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
        points: { show: !bars && (labels !== undefined || s.values.length < 40 || hasIsolated(s.values)) },
        paths: bars ? uPlot.paths.bars({ size: [0.7, 60] }) : undefined
      });
    });
    var bands = chart.bands || [];
    var opts = {
      width: Math.max(300, element.clientWidth), height: 260, tzDate: utc,
      scales: { x: { time: !labels }, y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.08 : 1]; } } },
      axes: [
        labels ? { values: function (u, ticks) { return ticks.map(function (t) { return labels[t] || ""; }); }, splits: function () { return labels.map(function (_, i) { return i; }); } } : {},
        { values: function (u, ticks) { return ticks.map(function (t) { return axisFormat(chart.unit)(u, t); }); }, size: 70 }
      ],
      series: series,
      legend: { live: true },
      plugins: bands.length ? [bandsPlugin(bands)] : []
    };
    if (labels) { opts.scales.x.range = function () { return [-0.5, labels.length - 0.5]; }; }
    var plot = new uPlot(opts, [chart.x].concat(chart.series.map(function (s) { return s.values; })), element);
    plots.push({ plot: plot, element: element });
    element.dataset.rendered = "chart";
    element.dataset.bands = String(bands.length);
    element.dataset.points = String(chart.series.reduce(function (n, s) {
      return n + s.values.filter(function (v) { return v != null; }).length; }, 0));
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

  function drawCharts(charts) {
    plots.forEach(function (entry) { entry.plot.destroy(); });
    plots = [];
    document.querySelectorAll("[data-chart]").forEach(function (element) {
      drawChart(element, charts[element.dataset.chart]);
    });
  }

  window.addEventListener("resize", function () {
    plots.forEach(function (entry) { entry.plot.setSize({ width: Math.max(300, entry.element.clientWidth), height: 260 }); });
  });

  // -- the Now page: cards and tables filled from its data, as text -------------------------------------

  var fmt = {
    count: function (v) { return v == null ? "–" : (v >= 10 || v === Math.round(v) ? Math.round(v).toLocaleString("en") : v.toFixed(1)); },
    rate: function (v) { return v == null ? "–" : (v >= 100 ? Math.round(v).toLocaleString("en") : v.toFixed(1)); },
    percent: function (v) { return v == null ? "–" : (v * 100).toFixed(v < 0.1 ? 2 : 1) + " %"; },
    duration: function (ms) { return ms == null ? "–" : (ms >= 60000 ? seconds(ms / 1000) : format("ms")(null, ms)); },
    seconds: function (v) { return v == null ? "–" : seconds(v); },
    time: function (ts) { return new Date(ts * 1e3).toISOString().slice(11, 16); }
  };

  function fillTable(id, rows, cells, empty) {
    var body = document.querySelector("#" + id + " tbody");
    if (!body) { return; }
    body.textContent = "";
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      cells.forEach(function (cell) {
        var td = document.createElement("td");
        td.className = cell.numeric ? "num" : "label";
        if (cell.bad && cell.bad(row)) { td.className += " bad"; }
        td.textContent = cell.text(row);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = cells.length; td.className = "empty"; td.textContent = empty;
      tr.appendChild(td); body.appendChild(tr);
    }
  }

  // The banner of firing alerts, as the server renders it (macros.html), from the page's refreshed data.
  function renderBanner(banner) {
    var element = document.getElementById("alerts-banner");
    if (!element || !banner) { return; }
    var list = element.querySelector("[data-banner-alerts]");
    var base = element.dataset.alertsUrl;
    list.textContent = "";
    banner.alerts.forEach(function (alert) {
      var item = document.createElement("li"), link = document.createElement("a");
      item.className = "severity-" + (alert.severity || "unknown");
      item.dataset.rule = alert.rule;
      link.href = base + "?rule=" + encodeURIComponent(alert.rule);
      [["severity", alert.severity || "–"], ["rule", alert.rule], ["labels", alert.group_text],
       ["since", "since " + alert.since_text + " UTC"], ["value", "value " + alert.value_text]].forEach(function (part, i) {
        var span = document.createElement("span");
        span.className = part[0];
        span.textContent = part[1];
        if (i) { link.appendChild(document.createTextNode(" ")); }
        link.appendChild(span);
      });
      item.appendChild(link);
      list.appendChild(item);
    });
    element.querySelector("[data-banner-title]").textContent =
      banner.firing + " alert" + (banner.firing === 1 ? "" : "s") + " firing";
    element.querySelector("[data-banner-more]").textContent = banner.more ? "and " + banner.more + " more" : "";
    element.hidden = !banner.alerts.length;
  }

  function renderNow(view) {
    renderBanner(view.banner);
    var summary = view.summary;
    var stats = {
      messages: fmt.count(summary.messages), error_rate: fmt.percent(summary.error_rate),
      workers: fmt.count(summary.workers), utilisation: fmt.percent(summary.utilisation),
      stalled_queues: fmt.count(summary.stalled_queues)
    };
    Object.keys(stats).forEach(function (key) {
      var element = document.querySelector("#now [data-stat=" + key + "]");
      if (element) { element.textContent = stats[key]; }
    });
    fillTable("now-actors", view.actor_rows, [
      { text: function (r) { return r.actor; } },
      { numeric: true, text: function (r) { return fmt.count(r.messages); } },
      { numeric: true, text: function (r) { return fmt.rate(r.per_minute); } },
      { numeric: true, text: function (r) { return fmt.percent(r.error_rate); }, bad: function (r) { return r.error_rate >= 0.05; } },
      { numeric: true, text: function (r) { return fmt.duration(r.processing_ms_total) + " · " + fmt.percent(r.processing_share); } }
    ], "No processed messages in this window.");
    fillTable("now-queues", view.queue_rows, [
      { text: function (r) { return r.queue; } },
      { numeric: true, text: function (r) { return fmt.count(r.ready); } },
      { numeric: true, text: function (r) { return fmt.count(r.max_ready); } },
      { numeric: true, text: function (r) { return fmt.seconds(r.oldest_age_s); } },
      { text: function (r) { return r.stalled_now ? "stalled" : (r.stalled_buckets ? r.stalled_buckets + " stalled intervals" : "–"); },
        bad: function (r) { return r.stalled_now; } }
    ], "No queue samples in this window.");
    // The latest first; the charts shade them all.
    var stalled = view.stalled.slice().sort(function (a, b) { return b.end - a.end || (a.queue < b.queue ? -1 : 1); });
    var shown = stalled.slice(0, MAX_STALLED_ROWS);
    fillTable("now-stalled", shown, [
      { text: function (r) { return r.queue; } },
      { text: function (r) { return fmt.time(r.start) + "–" + fmt.time(r.end) + " UTC"; } },
      { numeric: true, text: function (r) { return fmt.count(r.ready); } }
    ], "No queue was stalled in this window.");
    var more = document.querySelector("#now [data-stalled-more]");
    if (more) { more.textContent = stalled.length > shown.length ? "and " + (stalled.length - shown.length) + " earlier" : ""; }
    var updated = document.querySelector("#now [data-updated]");
    if (updated) { updated.textContent = new Date(view.generated_at * 1e3).toISOString().slice(11, 19) + " UTC"; }
    drawCharts(view.charts);
  }

  function startRefreshing(element) {
    var url = element.dataset.refreshUrl, every = Number(element.dataset.refreshS) * 1000;
    var status = element.querySelector("[data-refresh-status]");
    element.dataset.refreshes = "0";
    var refresh = function () {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (response) {
          if (!response.ok) { throw new Error("the dashboard answered " + response.status); }
          return response.json();
        })
        .then(function (view) {
          renderNow(view);
          element.dataset.refreshes = String(Number(element.dataset.refreshes) + 1);
          if (status) { status.textContent = ""; }
        })
        .catch(function (error) { if (status) { status.textContent = "Refresh failed: " + error.message; } })
        .then(function () { window.setTimeout(refresh, every); });
    };
    window.setTimeout(refresh, every);
  }

  var nowPage = document.getElementById("now");
  if (nowPage) {
    renderNow(data);
    startRefreshing(nowPage);
  } else {
    drawCharts(data);
  }

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
