// Overview: counts per status and workflow, runs per minute, backlog, unowned runs, live
// workers and the runs no live worker serves.

import { api, onEvent } from "./api.js";
import { h, replace, duration, statusBadge } from "./dom.js";
import { perMinuteChart } from "./chart.js";

export const STATUSES = ["pending", "running", "completed", "failed", "canceled"];

export async function overviewPage(root, signal) {
  const body = h("div", { class: "overview" }, h("p", { class: "muted" }, "Loading…"));
  replace(root, h("h2", {}, "Overview"), body);
  let timer = null;
  const refresh = async () => {
    const [counts, stats, fleet] = await Promise.all([api("/api/counts"), api("/api/stats"), api("/api/workers")]);
    if (signal.aborted) return;
    replace(body, render(counts, stats, fleet));
  };
  await refresh();
  // Counts are shared by the server for up to 2 s: refresh soon after events, and once
  // more when they have settled.
  let trailing = null;
  const stop = onEvent(() => {
    if (timer === null) timer = setTimeout(() => { timer = null; refresh().catch(() => {}); }, 1000);
    clearTimeout(trailing);
    trailing = setTimeout(() => refresh().catch(() => {}), 3000);
  });
  const every = setInterval(() => refresh().catch(() => {}), 15000);
  signal.addEventListener("abort", () => { stop(); clearInterval(every); clearTimeout(timer); clearTimeout(trailing); });
}

function render(counts, stats, fleet) {
  const total = STATUSES.reduce((sum, s) => sum + counts.by_status[s], 0);
  const cards = h("div", { class: "cards" },
    STATUSES.map((s) => h("a", { class: `card status-card status-${s}`, href: `#/runs?status=${s}`, id: `count-${s}` },
      h("div", { class: "card-value" }, String(counts.by_status[s])),
      h("div", { class: "card-label" }, s))),
    h("div", { class: "card total" }, h("div", { class: "card-value" }, String(total)), h("div", { class: "card-label" }, "all runs")));

  const backlogWarn = stats.oldest_ready_age_seconds > 60;
  const health = h("div", { class: "cards" },
    h("div", { class: "card", id: "ready-runs" },
      h("div", { class: "card-value" }, String(stats.ready_runs)),
      h("div", { class: "card-label" }, "ready runs (backlog)")),
    h("div", { class: `card ${backlogWarn ? "warn" : ""}`, id: "oldest-ready" },
      h("div", { class: "card-value" }, stats.ready_runs ? duration(stats.oldest_ready_age_seconds * 1000) : "—"),
      h("div", { class: "card-label" }, "oldest ready run waiting")),
    h("div", { class: `card ${stats.unowned_runs ? "bad" : ""}`, id: "unowned-runs" },
      h("div", { class: "card-value" }, String(stats.unowned_runs)),
      h("div", { class: "card-label" }, "unowned runs (should be 0)")),
    workerCards(fleet, stats.ready_runs));

  const names = Object.keys(counts.by_workflow).sort();
  const table = names.length
    ? h("table", { class: "grid-table", id: "workflow-counts" },
        h("thead", {}, h("tr", {}, h("th", {}, "workflow"), STATUSES.map((s) => h("th", { class: "num" }, statusBadge(s))))),
        h("tbody", {}, names.map((name) => h("tr", {},
          h("td", {}, h("a", { href: `#/runs?workflow=${encodeURIComponent(name)}` }, name)),
          STATUSES.map((s) => {
            const n = counts.by_workflow[name][s];
            return h("td", { class: `num ${n ? "" : "zero"}` },
              n ? h("a", { href: `#/runs?workflow=${encodeURIComponent(name)}&status=${s}` }, String(n)) : "0");
          })))))
    : h("p", { class: "muted" }, "No runs yet. Start one from “Start a run”.");

  return [
    h("section", { class: "panel" }, h("h3", {}, "Runs by status"), cards),
    h("section", { class: "panel" }, h("h3", {}, "Backlog"), health),
    h("section", { class: "panel" }, h("h3", {}, "Runs per minute, last hour"), perMinuteChart(stats.per_minute)),
    h("section", { class: "panel" }, h("h3", {}, "By workflow"), table),
  ];
}

// Who serves the backlog: live workers, and (when there are any) ready runs that none of them
// serves or runs held without progress, each a link to the workers page.
function workerCards(fleet, ready) {
  const unserved = fleet.unserved.reduce((sum, u) => sum + u.ready, 0);
  const stuck = fleet.stuck.length;
  return [
    h("a", { class: `card ${!fleet.workers.length && ready ? "warn" : ""}`, href: "#/workers", id: "live-workers-count" },
      h("div", { class: "card-value" }, String(fleet.workers.length)),
      h("div", { class: "card-label" }, fleet.workers.length === 1 ? "live worker" : "live workers")),
    unserved ? h("a", { class: "card bad", href: "#/workers", id: "unserved-runs" },
      h("div", { class: "card-value" }, String(unserved)),
      h("div", { class: "card-label" }, "ready runs no live worker serves")) : null,
    stuck ? h("a", { class: "card warn", href: "#/workers", id: "stuck-runs" },
      h("div", { class: "card-value" }, fleet.stuck_more ? `${stuck}+` : String(stuck)),
      h("div", { class: "card-label" }, "runs held without progress")) : null,
  ];
}
