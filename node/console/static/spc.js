// Live control charts: one server-sent event stream for the page, one uPlot per
// characteristic (individuals) or two (X-bar over R, when its "Chart" select says so).
// The server sends a chart's whole state when its rows change (node/console/spc.py);
// this script only draws it. Switching a view reopens the stream with the new views, and
// the server answers with every chart's state at once.
(function () {
  "use strict";
  var figures = Array.prototype.slice.call(document.querySelectorAll("figure[data-series]"));
  if (!figures.length || typeof uPlot === "undefined") return;
  var root = document.body.getAttribute("data-root");
  var charts = {}, xcharts = {}, source = null;

  function fmt(v) { return v === null || v === undefined ? "—" : Number(v).toPrecision(4); }

  function line(label, colour, dash) {
    return { label: label, stroke: colour, width: 1.5, dash: dash, points: { show: false } };
  }

  // x-bar and R charts: x counts subgroups, and the spec limits (on single values) are off
  function make(el, yLabel, height, subgroups) {
    var spec = subgroups ? { show: false } : {};
    var opts = {
      width: Math.max(280, el.clientWidth || 600),
      height: height,
      scales: { x: { time: false } },
      legend: { show: true, live: false },
      cursor: { drag: { x: true, y: false } },
      series: [
        { label: "point" },
        { label: "value", stroke: "#1f4e79", width: 1.5, points: { show: true, size: 4, fill: "#1f4e79" } },
        line("CL", "#555555"),
        line("UCL", "#b35900", [6, 4]),
        line("LCL", "#b35900", [6, 4]),
        Object.assign(line("USL", "#b00020", [2, 3]), spec),
        Object.assign(line("LSL", "#b00020", [2, 3]), spec),
        {
          label: "rule hit", stroke: "#b00020", width: 0,
          paths: function () { return null; },
          points: { show: true, size: 11, stroke: "#b00020", fill: "#ff5a5a", width: 2 },
        },
      ],
      axes: [{ label: subgroups ? "subgroup" : "point" }, { label: yLabel }],
    };
    return new uPlot(opts, [[], [], [], [], [], [], [], []], el);
  }

  function constant(n, v) {
    var out = new Array(n);
    for (var i = 0; i < n; i++) out[i] = (v === null || v === undefined) ? null : v;
    return out;
  }

  function draw(state) {
    var figure = document.querySelector('figure[data-series="' + CSS.escape(state.key) + '"]');
    if (!figure) return;
    var chart = charts[state.key] ||
      (charts[state.key] = make(figure.querySelector(".plot.individuals"), "value", 260));
    plot(chart, state.first, state.y, state.violations, state.centre, state.ucl, state.lcl,
      state.usl, state.lsl);
    figure.setAttribute("data-points", String(state.n));
    figure.setAttribute("data-violations", String(state.violations.length));
    figure.querySelector(".stats").textContent = state.n + " points · CL " + fmt(state.centre) +
      " · UCL " + fmt(state.ucl) + " · LCL " + fmt(state.lcl) +
      (state.centre === null ? " · baseline: first " + state.baseline + " points" : "");
    var shown = state.violations.map(function (v) {
      return [String(v.i + 1), fmt(v.value), v.rules.join(", ")];
    });
    var rules = Object.assign({}, state.rules);
    if (state.xbar) {
      drawXbar(figure, state);
      shown = shown.concat(state.xbar.violations.map(function (v) {
        return ["subgroup " + (v.i + 1) + " (X-bar)", fmt(v.value), v.rules.join(", ")];
      }), state.xbar.r_violations.map(function (v) {
        return ["subgroup " + (v.i + 1) + " (R)", fmt(v.value), v.rules.join(", ")];
      }));
      Object.keys(state.xbar.rules).forEach(function (rule) {
        rules[rule] = rules[rule] || state.xbar.rules[rule];
      });
    }
    var rows = figure.querySelector(".violations tbody");
    rows.textContent = "";
    shown.slice(-200).forEach(function (cells) {
      var tr = document.createElement("tr");
      cells.forEach(function (text) {
        var td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      });
      rows.appendChild(tr);
    });
    figure.querySelector(".vcount").textContent = String(shown.length);
    var list = figure.querySelector(".violations .rules");
    list.textContent = "";
    Object.keys(rules).forEach(function (rule) {
      var dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = rule;
      dd.textContent = rules[rule];
      list.appendChild(dt);
      list.appendChild(dd);
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

  // the points, their centre line and limits, and the rule hits, from index `first` on
  function plot(chart, first, ys, violations, centre, ucl, lcl, usl, lsl) {
    var n = ys.length;
    var xs = new Array(n), hit = constant(n, null);
    for (var i = 0; i < n; i++) xs[i] = first + i + 1;
    violations.forEach(function (v) { if (v.i >= first) hit[v.i - first] = v.value; });
    chart.setData([xs, ys, constant(n, centre), constant(n, ucl), constant(n, lcl),
      constant(n, usl), constant(n, lsl), hit]);
    var el = chart.root.parentNode;
    el.setAttribute("data-points", String(n));
    el.setAttribute("data-violations", String(violations.length));
  }

  function drawXbar(figure, state) {
    var key = state.key, x = state.xbar;
    var pair = xcharts[key];
    if (!pair || pair.n !== x.n) {
      if (pair) { pair.x.destroy(); pair.r.destroy(); }
      pair = xcharts[key] = {
        n: x.n,
        x: make(figure.querySelector(".plot.xbar"), "X-bar (n=" + x.n + ")", 220, true),
        r: make(figure.querySelector(".plot.rchart"), "R (n=" + x.n + ")", 160, true),
      };
    }
    plot(pair.x, x.first, x.x, x.violations, x.centre, x.ucl, x.lcl, null, null);
    plot(pair.r, x.first, x.r, x.r_violations, x.r_centre, x.r_ucl, x.r_lcl, null, null);
    figure.setAttribute("data-subgroups", String(x.groups));
    figure.setAttribute("data-pending", String(x.pending));
    figure.querySelector(".xstats").textContent = x.groups + " subgroups of " + x.n +
      (x.pending ? " (+" + x.pending + " values waiting, not drawn)" : "") +
      " · X-dbar " + fmt(x.centre) + " · UCL " + fmt(x.ucl) + " · LCL " + fmt(x.lcl) +
      " · R-bar " + fmt(x.r_centre) + " · R UCL " + fmt(x.r_ucl) + " · R LCL " + fmt(x.r_lcl) +
      (x.centre === null ? " · baseline: first " + x.baseline + " subgroups" : "");
  }

  function connect() {
    if (source) source.close();
    var query = figures.map(function (f) {
      var key = f.getAttribute("data-series");
      var q = "series=" + encodeURIComponent(key);
      if (f.querySelector("select.view").value === "xbar") {
        q += "&xbar=" + encodeURIComponent(f.querySelector("select.subgroup").value + ":" + key);
      }
      return q;
    }).join("&");
    source = new EventSource(root + "/spc/stream?" + query);
    source.addEventListener("chart", function (event) { draw(JSON.parse(event.data)); });
  }

  figures.forEach(function (figure) {
    var view = figure.querySelector("select.view"), size = figure.querySelector("select.subgroup");
    function apply() {
      var xbar = view.value === "xbar";
      size.disabled = !xbar;
      figure.querySelector(".xbar-r").hidden = !xbar;
      figure.querySelector(".plot.individuals").hidden = xbar;
      figure.setAttribute("data-view", view.value);
      if (!xbar) {
        var key = figure.getAttribute("data-series");
        if (xcharts[key]) { xcharts[key].x.destroy(); xcharts[key].r.destroy(); }
        delete xcharts[key];
        figure.removeAttribute("data-subgroups");
        figure.removeAttribute("data-pending");
      }
      connect();
    }
    view.addEventListener("change", apply);
    size.addEventListener("change", apply);
    figure.setAttribute("data-view", view.value);
  });
  connect();

  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      Object.keys(charts).forEach(function (key) {
        var figure = document.querySelector('figure[data-series="' + CSS.escape(key) + '"]');
        var el = figure.querySelector(".plot.individuals");
        if (!el.hidden) charts[key].setSize({ width: Math.max(280, el.clientWidth), height: 260 });
      });
      Object.keys(xcharts).forEach(function (key) {
        var pair = xcharts[key], el = pair.x.root.parentNode;
        var width = Math.max(280, el.clientWidth);
        pair.x.setSize({ width: width, height: 220 });
        pair.r.setSize({ width: width, height: 160 });
      });
    }, 150);
  });
})();
