// Live individuals control charts: one server-sent event stream for the page, one uPlot
// per characteristic. The server sends a chart's whole state when its rows change
// (node/console/spc.py); this script only draws it.
(function () {
  "use strict";
  var figures = Array.prototype.slice.call(document.querySelectorAll("figure[data-series]"));
  if (!figures.length || typeof uPlot === "undefined") return;
  var root = document.body.getAttribute("data-root");
  var charts = {};

  function fmt(v) { return v === null || v === undefined ? "—" : Number(v).toPrecision(4); }

  function line(label, colour, dash) {
    return { label: label, stroke: colour, width: 1.5, dash: dash, points: { show: false } };
  }

  function make(figure) {
    var plot = figure.querySelector(".plot");
    var opts = {
      width: Math.max(280, plot.clientWidth || 600),
      height: 260,
      scales: { x: { time: false } },
      legend: { show: true, live: false },
      cursor: { drag: { x: true, y: false } },
      series: [
        { label: "point" },
        { label: "value", stroke: "#1f4e79", width: 1.5, points: { show: true, size: 4, fill: "#1f4e79" } },
        line("CL", "#555555"),
        line("UCL", "#b35900", [6, 4]),
        line("LCL", "#b35900", [6, 4]),
        line("USL", "#b00020", [2, 3]),
        line("LSL", "#b00020", [2, 3]),
        {
          label: "rule hit", stroke: "#b00020", width: 0,
          paths: function () { return null; },
          points: { show: true, size: 11, stroke: "#b00020", fill: "#ff5a5a", width: 2 },
        },
      ],
      axes: [{ label: "point" }, { label: "value" }],
    };
    return new uPlot(opts, [[], [], [], [], [], [], [], []], plot);
  }

  function constant(n, v) {
    var out = new Array(n);
    for (var i = 0; i < n; i++) out[i] = (v === null || v === undefined) ? null : v;
    return out;
  }

  function draw(state) {
    var figure = document.querySelector('figure[data-series="' + CSS.escape(state.key) + '"]');
    if (!figure) return;
    var chart = charts[state.key] || (charts[state.key] = make(figure));
    var n = state.y.length;
    var xs = new Array(n), hit = constant(n, null);
    for (var i = 0; i < n; i++) xs[i] = state.first + i + 1;
    state.violations.forEach(function (v) { hit[v.i - state.first] = v.value; });
    chart.setData([xs, state.y, constant(n, state.centre), constant(n, state.ucl),
      constant(n, state.lcl), constant(n, state.usl), constant(n, state.lsl), hit]);
    figure.setAttribute("data-points", String(state.n));
    figure.setAttribute("data-violations", String(state.violations.length));
    figure.querySelector(".stats").textContent = state.n + " points · CL " + fmt(state.centre) +
      " · UCL " + fmt(state.ucl) + " · LCL " + fmt(state.lcl) +
      (state.centre === null ? " · baseline: first " + state.baseline + " points" : "");
    var rows = figure.querySelector(".violations tbody");
    rows.textContent = "";
    state.violations.slice(-200).forEach(function (v) {
      var tr = document.createElement("tr");
      [String(v.i + 1), fmt(v.value), v.rules.join(", ")].forEach(function (text) {
        var td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      });
      rows.appendChild(tr);
    });
    figure.querySelector(".vcount").textContent = String(state.violations.length);
    var rules = figure.querySelector(".violations .rules");
    rules.textContent = "";
    Object.keys(state.rules).forEach(function (rule) {
      var dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = rule;
      dd.textContent = state.rules[rule];
      rules.appendChild(dt);
      rules.appendChild(dd);
    });
    var item = document.querySelector('[data-cpk-for="' + CSS.escape(state.key) + '"]');
    if (item) {
      var value = item.querySelector(".cpk-value");
      if (state.cpk === null) {
        value.textContent = "needs " + state.cpk_window + " points and a spec limit";
      } else {
        value.textContent = "Cpk " + state.cpk.toFixed(2) + (state.cpk_low ? " — below " +
          state.cpk_threshold + ": adjust the process" : " (≥ " + state.cpk_threshold + ")");
      }
      item.classList.toggle("cpk-warning", !!state.cpk_low);
      document.getElementById("cpk-panel").classList.toggle(
        "warning", !!document.querySelector("#cpk-list .cpk-warning"));
    }
  }

  var query = figures.map(function (f) {
    return "series=" + encodeURIComponent(f.getAttribute("data-series"));
  }).join("&");
  var source = new EventSource(root + "/spc/stream?" + query);
  source.addEventListener("chart", function (event) { draw(JSON.parse(event.data)); });

  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      Object.keys(charts).forEach(function (key) {
        var figure = document.querySelector('figure[data-series="' + CSS.escape(key) + '"]');
        var plot = figure.querySelector(".plot");
        charts[key].setSize({ width: Math.max(280, plot.clientWidth), height: 260 });
      });
    }, 150);
  });
})();
