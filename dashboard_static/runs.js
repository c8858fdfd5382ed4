// Runs list: filters, search, cursor pages, rows kept live by the stream.

import { api, onEvent } from "./api.js";
import { h, replace, shortId, statusBadge, timeCell } from "./dom.js";
import { STATUSES } from "./overview.js";
import { whyItWaits } from "./waiting.js";

export async function runsPage(root, signal, params) {
  const status = params.get("status") || "";
  const workflow = params.get("workflow") || "";
  const q = params.get("q") || "";
  const cursor = params.get("cursor") || "";
  const back = params.getAll("back");

  const counts = await api("/api/counts");
  const workflows = Object.keys(counts.by_workflow).sort();
  if (workflow && !workflows.includes(workflow)) workflows.push(workflow);

  const form = h("form", { class: "filters", id: "run-filters" },
    h("label", {}, "Status ",
      h("select", { name: "status" }, h("option", { value: "" }, "any"),
        STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)))),
    h("label", {}, "Workflow ",
      h("select", { name: "workflow" }, h("option", { value: "" }, "any"),
        workflows.map((w) => h("option", { value: w, selected: w === workflow }, w)))),
    h("label", { class: "grow" }, "Search ",
      h("input", { name: "q", type: "search", value: q, placeholder: "exact run id or idempotency key", size: 34 })),
    h("button", { type: "submit" }, "Apply"));
  form.addEventListener("change", (e) => { if (e.target.name !== "q") form.requestSubmit(); });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    location.hash = `#/runs${next.toString() ? "?" + next : ""}`;
  });

  const query = new URLSearchParams({ limit: "50" });
  if (status) query.set("status", status);
  if (workflow) query.set("workflow", workflow);
  if (q) query.set("q", q);
  if (cursor) query.set("cursor", cursor);
  const page = await api(`/api/runs?${query}`);
  if (signal.aborted) return;

  const tbody = h("tbody", {});
  const rows = new Map();
  // heldBack: why a ready run waits when a limit keeps it from being claimed (the server's word).
  const renderRow = (run, heldBack) => {
    const why = heldBack ? `held back by a limit: ${heldBack}` : whyItWaits(run);
    const tr = h("tr", { dataset: { runId: run.id } },
      h("td", { class: "mono" }, h("a", { href: `#/run/${encodeURIComponent(run.id)}`, title: run.id }, shortId(run.id))),
      h("td", {}, run.workflow_name, run.version ? h("span", { class: "muted" }, ` v${run.version}`) : null),
      h("td", {}, statusBadge(run.status)),
      h("td", { class: "mono key" }, run.key ?? ""),
      h("td", { class: "num priority" }, String(run.priority ?? 0)),
      h("td", { class: heldBack ? "why held-back" : "why" }, why || (run.error ? `${run.error.type}: ${run.error.message}` : "")),
      h("td", { class: "num" }, String(run.attempts)),
      h("td", {}, timeCell(run.created_at)),
      h("td", {}, timeCell(run.updated_at)));
    const old = rows.get(run.id);
    if (old) old.replaceWith(tr); else tbody.appendChild(tr);
    rows.set(run.id, tr);
    return tr;
  };
  const heldBack = page.held_back || {};
  page.runs.forEach((run) => renderRow(run, heldBack[run.id]));

  const pager = h("div", { class: "pager" });
  if (back.length || cursor) {
    const prev = new URLSearchParams(params);
    prev.delete("back");
    back.slice(0, -1).forEach((b) => prev.append("back", b));
    const previous = back.length ? back[back.length - 1] : "";
    if (previous) prev.set("cursor", previous); else prev.delete("cursor");
    pager.appendChild(h("a", { class: "button", href: `#/runs?${prev}` }, "← Newer"));
  }
  if (page.next_cursor) {
    const next = new URLSearchParams(params);
    next.append("back", cursor);
    next.set("cursor", page.next_cursor);
    pager.appendChild(h("a", { class: "button", href: `#/runs?${next}`, id: "next-page" }, "Older →"));
  }

  const table = h("table", { class: "grid-table runs", id: "runs-table" },
    h("thead", {}, h("tr", {}, ["run", "workflow", "status", "key", "priority", "why it waits / error", "attempts", "created", "updated"].map((t) => h("th", {}, t)))),
    tbody);
  const empty = h("p", { class: "muted", id: "no-runs", hidden: page.runs.length > 0 }, q ? "No run has that id or idempotency key." : "No runs match.");
  replace(root, h("h2", {}, "Runs"), form, table, empty, pager);

  // Live: refresh rows on the page; on the first page, show new matching runs at the top.
  const pending = new Set();
  let timer = null;
  const flush = async () => {
    timer = null;
    const ids = [...pending];
    pending.clear();
    for (const id of ids) {
      let detail;
      try { detail = await api(`/api/runs/${encodeURIComponent(id)}`); } catch { continue; }
      if (signal.aborted) return;
      const run = detail.run;
      const held = detail.held_back;
      const matches = (!status || run.status === status) && (!workflow || run.workflow_name === workflow);
      if (rows.has(id)) {
        renderRow(run, held);
      } else if (matches && !cursor && !q) {
        const tr = renderRow(run, held);
        tbody.insertBefore(tr, tbody.firstChild);
        tr.classList.add("flash");
        empty.hidden = true;
      }
    }
  };
  const stop = onEvent((event) => {
    if (rows.has(event.run_id) || (event.type === "run_created" && !cursor && !q)) {
      pending.add(event.run_id);
      if (timer === null) timer = setTimeout(flush, 250);
    }
  });
  signal.addEventListener("abort", () => { stop(); clearTimeout(timer); });
}
