// Workers: the live workers (what each serves, busy slots, last heartbeat), and the runs they
// leave stranded: ready runs that no live worker serves, and runs held without progress.

import { api, onEvent } from "./api.js";
import { h, svg, replace, duration, absolute, timeCell, shortId } from "./dom.js";

const REFRESH_MS = 5000;

// "name@version", or the name alone for runs started without a version.
export function servedName(name, version) {
  return version === null || version === undefined ? name : `${name}@${version}`;
}

// "4s ago", "3 min 10 s ago".
export function secondsAgo(seconds) {
  const s = Math.max(0, seconds);
  return s < 60 ? `${Math.floor(s)}s ago` : `${duration(s * 1000)} ago`;
}

export async function workersPage(root, signal) {
  const body = h("div", { class: "workers" }, h("p", { class: "muted" }, "Loading…"));
  replace(root, h("h2", {}, "Workers"), body);
  const refresh = async () => {
    const fleet = await api("/api/workers");
    if (signal.aborted) return;
    replace(body, render(fleet));
  };
  await refresh();
  // Events change what is ready and held: refresh soon after them (at most once a second),
  // and every few seconds for heartbeats, which are not events.
  let timer = null;
  const stop = onEvent(() => {
    if (timer === null) timer = setTimeout(() => { timer = null; refresh().catch(() => {}); }, 1000);
  });
  const every = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  signal.addEventListener("abort", () => { stop(); clearInterval(every); clearTimeout(timer); });
}

// 600 -> "10 min", 90 -> "90 s".
function thresholdText(seconds) {
  if (seconds >= 3600 && seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds >= 60 && seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

// A held run's lease: renewed by a live worker's heartbeat ("in 25 s"), or run out.
function leaseCell(until) {
  if (!until) return h("span", { class: "muted" }, "—");
  const expired = Date.parse(until) <= Date.now();
  return h("span", { class: expired ? "lease-expired" : "" }, timeCell(until), expired ? " (ran out)" : null);
}

function slotBar(busy, concurrency) {
  const share = concurrency > 0 ? Math.min(1, busy / concurrency) : 0;
  return h("span", { class: "slots" },
    svg("svg", { class: "slot-bar", viewBox: "0 0 100 8", preserveAspectRatio: "none", "aria-hidden": "true" },
      svg("rect", { class: "slot-track", x: 0, y: 0, width: 100, height: 8, rx: 3 }),
      share > 0 ? svg("rect", { class: `slot-fill ${share >= 1 ? "full" : ""}`, x: 0, y: 0, width: (share * 100).toFixed(1), height: 8, rx: 3 }) : null),
    h("span", { class: "slot-count" }, `${busy} / ${concurrency}`));
}

function workersTable(workers) {
  if (!workers.length) {
    return h("div", { class: "empty-state", id: "no-workers" },
      h("strong", {}, "No live workers."),
      " Nothing is claiming runs in this namespace: start one with ",
      h("code", {}, "ow-es worker APP"), ".");
  }
  return h("table", { class: "grid-table", id: "workers-table" },
    h("thead", {}, h("tr", {}, ["worker", "host", "pid", "serves", "busy slots", "last heartbeat", "started"].map((t) => h("th", { class: t === "pid" ? "num" : null }, t)))),
    h("tbody", {}, workers.map((w) => h("tr", { dataset: { workerId: w.id } },
      h("td", { class: "mono worker-id" }, w.id),
      h("td", {}, w.host),
      h("td", { class: "num" }, String(w.pid)),
      h("td", { class: "serves" }, w.workflows.length
        ? w.workflows.map((s) => h("span", { class: "tag" }, servedName(s.name, s.version)))
        : h("span", { class: "muted" }, "nothing")),
      h("td", { class: "busy" }, slotBar(w.busy, w.concurrency)),
      h("td", { class: "heartbeat" }, h("span", { title: absolute(w.heartbeat_at) }, secondsAgo(w.heartbeat_age_seconds))),
      h("td", {}, timeCell(w.started_at))))));
}

function unservedSection(unserved) {
  const total = unserved.reduce((sum, u) => sum + u.ready, 0);
  const content = unserved.length
    ? [h("p", { class: "hint" }, "Ready runs of a workflow and version that no live worker serves: nothing will claim them until a worker that serves them starts."),
        h("table", { class: "grid-table", id: "unserved-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "workflow"), h("th", {}, "version"), h("th", { class: "num" }, "ready runs"), h("th", {}, ""))),
          h("tbody", {}, unserved.map((u) => h("tr", { dataset: { workflow: u.workflow_name } },
            h("td", {}, u.workflow_name),
            h("td", {}, u.version === null ? h("span", { class: "muted" }, "none") : u.version),
            h("td", { class: "num" }, String(u.ready)),
            h("td", {}, h("a", { href: `#/runs?workflow=${encodeURIComponent(u.workflow_name)}` }, "see runs →"))))))]
    : h("p", { class: "ok-state", id: "no-unserved" }, "Every ready run is served by a live worker.");
  return h("section", { class: `panel ${unserved.length ? "flagged" : ""}`, id: "unserved" },
    h("h3", {}, "Runs no live worker serves", unserved.length ? h("span", { class: "flag-count" }, String(total)) : null),
    content);
}

function stuckSection(stuck, more, after) {
  const threshold = thresholdText(after);
  const content = stuck.length
    ? [h("p", { class: "hint" }, `Runs held by a worker with no event for over ${threshold}: a hung step, or just a long one.`),
        h("table", { class: "grid-table", id: "stuck-table" },
          h("thead", {}, h("tr", {}, ["run", "workflow", "worker", "no event for", "lease"].map((t) => h("th", {}, t)))),
          h("tbody", {}, stuck.map((r) => h("tr", { dataset: { runId: r.id } },
            h("td", { class: "mono" }, h("a", { href: `#/run/${encodeURIComponent(r.id)}`, title: r.id }, shortId(r.id))),
            h("td", {}, servedName(r.workflow_name, r.version)),
            h("td", { class: "mono" }, r.worker_id || "—"),
            h("td", { class: "idle" }, h("span", { title: `last event at ${absolute(r.updated_at)}` }, duration(r.idle_seconds * 1000))),
            h("td", {}, leaseCell(r.lease_until)))))),
        more ? h("p", { class: "muted" }, `Showing the ${stuck.length} idle longest.`) : null]
    : h("p", { class: "ok-state", id: "no-stuck" }, `No run has been held without progress for over ${threshold}.`);
  return h("section", { class: `panel ${stuck.length ? "flagged" : ""}`, id: "stuck" },
    h("h3", {}, "Runs held without progress", stuck.length ? h("span", { class: "flag-count" }, more ? `${stuck.length}+` : String(stuck.length)) : null),
    content);
}

function render(fleet) {
  const busy = fleet.workers.reduce((sum, w) => sum + w.busy, 0);
  const slots = fleet.workers.reduce((sum, w) => sum + w.concurrency, 0);
  const summary = fleet.workers.length
    ? `${fleet.workers.length} live worker${fleet.workers.length === 1 ? "" : "s"}, ${busy} of ${slots} slots busy`
    : null;
  return [
    h("section", { class: "panel", id: "live-workers" },
      h("h3", {}, "Live workers", summary ? h("span", { class: "muted summary" }, summary) : null),
      workersTable(fleet.workers)),
    unservedSection(fleet.unserved),
    stuckSection(fleet.stuck, fleet.stuck_more, fleet.stuck_after_seconds),
  ];
}
