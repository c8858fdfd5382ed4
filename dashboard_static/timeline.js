// A run's step attempts drawn to scale on one time axis: one row per step, one bar per attempt.

import { h, svg, duration, absolute } from "./dom.js";
import { availableWidth } from "./chart.js";

export function stepTimeline(steps, run, nowIso) {
  if (!steps.length) return h("p", { class: "muted" }, "No step attempts yet.");
  const now = new Date(nowIso || Date.now()).getTime();
  const start = Math.min(...steps.map((s) => Date.parse(s.started_at)), Date.parse(run.created_at));
  const endOf = (s) => (s.finished_at ? Date.parse(s.finished_at) : run.finished_at ? Date.parse(run.finished_at) : now);
  const end = Math.max(start + 1, ...steps.map(endOf));
  const names = [...new Set(steps.map((s) => s.step_name))];
  const label = 170, width = availableWidth(900), right = 10, row = 24, top = 8, axis = 26;
  const height = top + names.length * row + axis;
  const x = (t) => label + ((t - start) / (end - start)) * (width - label - right);

  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "timeline", role: "img", "aria-label": "Step attempts on a time axis" });
  names.forEach((name, i) => {
    const y = top + i * row;
    if (i % 2 === 0) chart.appendChild(svg("rect", { x: 0, y, width, height: row, class: "stripe" }));
    chart.appendChild(svg("text", { x: label - 8, y: y + row / 2 + 4, "text-anchor": "end", class: "step-label" }, name.length > 24 ? name.slice(0, 23) + "…" : name));
  });
  for (const step of steps) {
    const y = top + names.indexOf(step.step_name) * row;
    const s = Date.parse(step.started_at);
    const e = endOf(step);
    const w = Math.max(3, x(e) - x(s));
    const tip = `${step.step_name} · attempt ${step.attempt} · ${step.kind} · ${step.status}` +
      ` · ${duration(e - s)}` + (step.error ? ` · ${step.error.type}: ${step.error.message}` : "");
    chart.appendChild(svg("rect", {
      x: x(s), y: y + 5, width: w, height: row - 10, rx: 3,
      class: `bar ${step.status} kind-${step.kind}`,
      dataset: { step: step.step_name, attempt: String(step.attempt) },
    }, svg("title", {}, tip)));
  }
  const baseline = top + names.length * row;
  chart.appendChild(svg("line", { x1: label, x2: width - right, y1: baseline + 2, y2: baseline + 2, class: "grid" }));
  chart.appendChild(svg("text", { x: label, y: baseline + 18, class: "axis" }, absolute(new Date(start).toISOString())));
  chart.appendChild(svg("text", { x: width - right, y: baseline + 18, class: "axis", "text-anchor": "end" }, `+${duration(end - start)}`));
  return h("div", { class: "timeline-box" }, chart,
    h("div", { class: "legend" },
      h("span", { class: "key completed" }, "completed"),
      h("span", { class: "key failed" }, "failed"),
      h("span", { class: "key running" }, "running / waiting")));
}

// Each failed attempt with its error and traceback.
export function failedAttempts(steps) {
  const failed = steps.filter((s) => s.status === "failed" && s.error);
  if (!failed.length) return null;
  return h("section", { class: "panel", id: "failed-attempts" },
    h("h3", {}, `Failed attempts (${failed.length})`),
    failed.map((s) => h("div", { class: "failure" },
      h("div", { class: "failure-head" },
        h("strong", {}, s.step_name), ` · attempt ${s.attempt} · `, absolute(s.finished_at || s.started_at)),
      h("div", { class: "error-line" }, h("span", { class: "error-type" }, s.error.type || "Error"), ": ", s.error.message || ""),
      s.error.traceback ? h("details", {}, h("summary", {}, "traceback"), h("pre", { class: "traceback" }, s.error.traceback)) : null)));
}
