// One run: its row (with its key, priority and the schedule it came from) and why it waits
// (a limit that holds it back included), its step attempts on a time axis (failures with their
// errors), parent and children, actions, the full event history, and a time-travel slider
// that shows the row and steps as of any event (GET /api/runs/{id}/state?seq=N).

import { api, onEvent } from "./api.js";
import { h, replace, absolute, timeCell, statusBadge, jsonBlock, shortId } from "./dom.js";
import { stepTimeline, failedAttempts } from "./timeline.js";
import { whyItWaits } from "./waiting.js";
import { signalForm } from "./actions.js";

export async function runPage(root, signal, runId) {
  let detail = await api(`/api/runs/${encodeURIComponent(runId)}`);
  let events = (await api(`/api/runs/${encodeURIComponent(runId)}/events`)).events;
  if (signal.aborted) return;

  const header = h("div", { class: "run-header" });
  const actions = h("div", { class: "actions", id: "run-actions" });
  const travel = h("section", { class: "panel travel", id: "time-travel" });
  const state = h("div", { id: "run-state" });
  const history = h("section", { class: "panel", id: "event-history" });
  replace(root, header, actions, travel, state, history);

  let shownSeq = null; // null: live (the latest state); a number: as of that event
  const slider = h("input", { type: "range", id: "seq-slider", min: 1, step: 1 });
  const sliderLabel = h("div", { class: "travel-label", id: "seq-label" });
  const liveButton = h("button", { type: "button", class: "secondary", id: "back-to-live" }, "Back to latest");
  replace(travel, h("h3", {}, "Time travel"), h("div", { class: "travel-row" }, slider, liveButton), sliderLabel);

  const renderHeader = () => {
    const run = detail.run;
    replace(header,
      h("h2", {}, h("span", { class: "muted" }, "Run "), h("span", { class: "mono", id: "run-id" }, run.id), " ", statusBadge(run.status)),
      h("div", { class: "subtitle" }, h("strong", {}, run.workflow_name), run.version ? ` version ${run.version}` : "",
        run.idempotency_key ? h("span", { class: "muted" }, " · idempotency key ", h("span", { class: "mono" }, run.idempotency_key)) : null));
    renderActions(run);
  };

  const renderActions = (run) => {
    const message = h("span", { class: "action-message", id: "action-message", role: "status" });
    const act = (label, path, confirmText, cls = "") =>
      h("button", { type: "button", class: cls, id: `action-${label.toLowerCase()}`, onclick: async () => {
        if (confirmText && !window.confirm(confirmText)) return;
        try {
          const result = await api(path, { method: "POST", body: {} });
          detail.run = result.run;
          message.textContent = `${label}: done, now ${result.run.status}`;
          await refresh();
        } catch (error) {
          message.textContent = `${label} failed: ${error.message}`;
          message.classList.add("error");
        }
      } }, label);
    const buttons = [];
    if (run.status === "pending" || run.status === "running") buttons.push(act("Cancel", `/api/runs/${encodeURIComponent(run.id)}/cancel`, `Cancel run ${run.id}${run.workflow_name ? ` (${run.workflow_name})` : ""} and its children?`, "danger"));
    if (run.status === "failed") buttons.push(act("Resume", `/api/runs/${encodeURIComponent(run.id)}/resume`, null));
    const waitsForSignal = run.waiting_for && run.waiting_for.kind === "signal" && run.status === "running";
    replace(actions, buttons, message,
      waitsForSignal ? h("details", { class: "inline-form", open: true }, h("summary", {}, `Send signal “${run.waiting_for.name}”`),
        signalForm({ name: run.waiting_for.name, compact: true, onSent: () => refresh() })) : null);
  };

  const renderState = (run, steps, asOf) => {
    // A ready run that a concurrency or rate limit keeps from being claimed (now, not as of
    // an earlier event: the server judges it against the runs held at this moment).
    const heldBack = asOf ? null : detail.held_back;
    const why = heldBack ? `held back by a limit: ${heldBack}` : whyItWaits(run, asOf ? Date.parse(run.updated_at) : Date.now());
    const rows = [
      ["status", statusBadge(run.status)],
      ["key", run.key === null || run.key === undefined ? "—" : h("span", { class: "mono", id: "run-key" }, run.key)],
      ["priority", h("span", { id: "run-priority" }, String(run.priority ?? 0))],
      ["schedule", detail.schedule ? h("span", { id: "run-schedule" }, detail.schedule) : "—"],
      ["attempts", String(run.attempts)],
      ["worker", run.worker_id || "—"],
      ["lease until", timeCell(run.lease_until)],
      ["available at", timeCell(run.available_at)],
      ["deadline", timeCell(run.deadline_at)],
      ["created", timeCell(run.created_at)],
      ["started", timeCell(run.started_at)],
      ["finished", timeCell(run.finished_at)],
      ["last event", [`#${run.seq} · `, timeCell(run.updated_at)]],
      ["parent", run.parent_run_id ? h("a", { href: `#/run/${encodeURIComponent(run.parent_run_id)}`, class: "mono", id: "parent-link" }, run.parent_run_id) : "—"],
      ["children", detail.children.length ? h("span", { id: "children-links" }, detail.children.map((id) => h("a", { href: `#/run/${encodeURIComponent(id)}`, class: "mono child-link", title: id }, shortId(id)))) : "—"],
    ];
    replace(state,
      asOf ? h("div", { class: "banner", id: "as-of-banner" }, `Showing the run as of event #${asOf.seq} (${asOf.type}, ${absolute(asOf.created_at)}). The actions act on the run as it is now.`) : null,
      why ? h("div", { class: heldBack ? "why-box held-back" : "why-box", id: "why-waits" }, h("strong", {}, "Why it waits: "), why) : null,
      h("div", { class: "columns" },
        h("section", { class: "panel" }, h("h3", {}, "Row"), h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
        h("section", { class: "panel io" },
          h("h3", {}, "Input"), h("div", { id: "run-input" }, jsonBlock(run.input, { open: true })),
          h("h3", {}, "Output"), h("div", { id: "run-output" }, run.output === null || run.output === undefined ? h("span", { class: "muted" }, "—") : jsonBlock(run.output, { open: true })),
          run.error ? [h("h3", {}, "Error"), h("div", { class: "error-box", id: "run-error" },
            h("div", { class: "error-line" }, h("span", { class: "error-type" }, run.error.type || "Error"), ": ", run.error.message || ""),
            run.error.traceback ? h("details", {}, h("summary", {}, "traceback"), h("pre", { class: "traceback" }, run.error.traceback)) : null)] : null)),
      h("section", { class: "panel" }, h("h3", {}, `Step attempts (${steps.length})`), stepTimeline(steps, run, asOf ? run.updated_at : detail.now)),
      failedAttempts(steps));
  };

  const renderHistory = () => {
    replace(history, h("h3", {}, `Event history (${events.length})`),
      h("table", { class: "grid-table events", id: "events-table" },
        h("thead", {}, h("tr", {}, h("th", { class: "num" }, "seq"), h("th", {}, "type"), h("th", {}, "time"), h("th", {}, "data"))),
        h("tbody", {}, events.map((e) => h("tr", { dataset: { seq: String(e.seq) }, class: shownSeq === e.seq ? "selected" : "" },
          h("td", { class: "num" }, h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); travelTo(e.seq); } }, String(e.seq))),
          h("td", {}, h("span", { class: `etype t-${e.type}` }, e.type)),
          h("td", {}, timeCell(e.created_at)),
          h("td", {}, jsonBlock(e.data, { summary: summaryOf(e) })))))));
  };

  const renderSlider = () => {
    const last = events.length ? events[events.length - 1].seq : 1;
    slider.max = String(last);
    slider.disabled = last <= 1;
    slider.value = String(shownSeq ?? last);
    const seq = shownSeq ?? last;
    const event = events.find((e) => e.seq === seq);
    sliderLabel.textContent = event ? `event #${seq} of ${last}: ${event.type} at ${absolute(event.created_at)}${shownSeq === null ? " (latest)" : ""}` : "";
    liveButton.hidden = shownSeq === null;
  };

  let travelToken = 0;
  const travelTo = async (seq) => {
    const last = events.length ? events[events.length - 1].seq : 1;
    const mine = ++travelToken;
    if (seq >= last) {
      shownSeq = null;
      renderSlider();
      renderState(detail.run, detail.steps, null);
      renderHistory();
      return;
    }
    shownSeq = seq;
    renderSlider();
    const past = await api(`/api/runs/${encodeURIComponent(runId)}/state?seq=${seq}`);
    if (mine !== travelToken || signal.aborted) return;
    renderState(past.run, past.steps, events.find((e) => e.seq === seq));
    renderHistory();
  };
  slider.addEventListener("input", () => travelTo(Number(slider.value)));
  liveButton.addEventListener("click", () => travelTo(Number.MAX_SAFE_INTEGER));

  const refresh = async () => {
    const [d, e] = await Promise.all([
      api(`/api/runs/${encodeURIComponent(runId)}`),
      api(`/api/runs/${encodeURIComponent(runId)}/events`),
    ]);
    if (signal.aborted) return;
    detail = d;
    events = e.events;
    renderHeader();
    renderSlider();
    if (shownSeq === null) renderState(detail.run, detail.steps, null);
    renderHistory();
  };

  renderHeader();
  renderSlider();
  renderState(detail.run, detail.steps, null);
  renderHistory();

  let timer = null;
  const stop = onEvent((event) => {
    if (event.run_id === runId || detail.children.includes(event.run_id)) {
      if (timer === null) timer = setTimeout(() => { timer = null; refresh().catch(() => {}); }, 200);
    }
  });
  signal.addEventListener("abort", () => { stop(); clearTimeout(timer); });
}

function summaryOf(event) {
  const d = event.data || {};
  const parts = [];
  for (const key of ["workflow_name", "step_name", "attempt", "signal_name", "worker_id", "until", "reason", "status", "child_run_id"]) {
    if (d[key] !== undefined && d[key] !== null) parts.push(`${key}=${typeof d[key] === "string" ? d[key] : JSON.stringify(d[key])}`);
  }
  if (d.error) parts.push(`error=${d.error.type}: ${d.error.message}`);
  const text = parts.join(" · ");
  return text.length > 110 ? text.slice(0, 109) + "…" : text || "data";
}
