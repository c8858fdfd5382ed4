// Runs per minute over the last hour, as a plain SVG line chart.

import { h, svg } from "./dom.js";

const SERIES = [
  { key: "started", label: "started", cls: "started" },
  { key: "finished", label: "finished", cls: "finished" },
  { key: "failed", label: "failed", cls: "failed" },
];

export function perMinuteChart(perMinute) {
  const width = availableWidth(720), height = 220, left = 40, right = 12, top = 12, bottom = 28;
  const n = perMinute.minutes.length;
  const max = Math.max(1, ...SERIES.flatMap((s) => perMinute[s.key]));
  const niceMax = niceCeil(max);
  const x = (i) => left + (i * (width - left - right)) / Math.max(1, n - 1);
  const y = (v) => top + (height - top - bottom) * (1 - v / niceMax);

  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": "Runs started, finished and failed per minute over the last hour",
  });
  for (const tick of [0, niceMax / 2, niceMax]) {
    chart.appendChild(svg("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), class: "grid" }));
    chart.appendChild(svg("text", { x: left - 6, y: y(tick) + 4, class: "axis", "text-anchor": "end" }, formatCount(tick)));
  }
  for (const [i, label] of [[0, "−60 min"], [Math.floor((n - 1) / 2), "−30 min"], [n - 1, "now"]]) {
    chart.appendChild(svg("text", { x: x(i), y: height - 8, class: "axis", "text-anchor": i === 0 ? "start" : i === n - 1 ? "end" : "middle" }, label));
  }
  for (const series of SERIES) {
    const values = perMinute[series.key];
    const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    chart.appendChild(svg("polyline", { points, class: `line ${series.cls}` }));
    values.forEach((v, i) => {
      if (!v) return;
      const minute = new Date(perMinute.minutes[i]);
      chart.appendChild(
        svg("circle", { cx: x(i), cy: y(v), r: 2.5, class: `dot ${series.cls}` },
          svg("title", {}, `${minute.toISOString().slice(11, 16)}Z: ${v} ${series.label}`)),
      );
    });
  }
  const legend = h("div", { class: "legend" },
    SERIES.map((s) => h("span", { class: `key ${s.cls}` },
      `${s.label} (${perMinute[s.key].reduce((a, b) => a + b, 0)} in the hour)`)));
  return h("figure", { class: "chart-box" }, chart, legend);
}

// Drawn at the width it is shown at, so text keeps its size.
export function availableWidth(fallback) {
  const page = document.getElementById("page");
  return page && page.clientWidth > 400 ? Math.round(page.clientWidth - 86) : fallback;
}

function niceCeil(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function formatCount(value) {
  return value >= 1000 ? `${(value / 1000).toFixed(value % 1000 ? 1 : 0)}k` : String(value);
}
