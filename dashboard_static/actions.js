// Actions: start a run, send a signal. Validation errors are shown next to the form.

import { api } from "./api.js";
import { h, replace } from "./dom.js";

function parseJson(text, what) {
  if (!text.trim()) return { value: null };
  try {
    return { value: JSON.parse(text) };
  } catch (error) {
    return { error: `${what} is not valid JSON: ${error.message}` };
  }
}

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), input, hint ? h("span", { class: "hint" }, hint) : null);
}

export async function startPage(root, signal) {
  const counts = await api("/api/counts");
  if (signal.aborted) return;
  const workflows = Object.keys(counts.by_workflow).sort();
  const list = h("datalist", { id: "workflow-names" }, workflows.map((w) => h("option", { value: w })));
  const name = h("input", { name: "workflow_name", id: "start-workflow", list: "workflow-names", required: true, autocomplete: "off", placeholder: "workflow name", value: workflows[0] || "" });
  const version = h("input", { name: "version", id: "start-version", placeholder: "none" });
  const input = h("textarea", { name: "input", id: "start-input", rows: 8, spellcheck: false }, "{}");
  const key = h("input", { name: "idempotency_key", id: "start-key", placeholder: "optional" });
  const availableAt = h("input", { name: "available_at", id: "start-available-at", placeholder: "now (or e.g. 5m, 2024-05-01T12:00:00Z)" });
  const deadlineAt = h("input", { name: "deadline_at", id: "start-deadline-at", placeholder: "none (or e.g. 1h)" });
  const error = h("div", { class: "form-error", id: "start-error", role: "alert" });
  const prefillVersion = async () => {
    if (!name.value) return;
    try {
      const latest = await api(`/api/runs?workflow=${encodeURIComponent(name.value)}&limit=1`);
      version.value = latest.runs.length && latest.runs[0].version ? latest.runs[0].version : "";
    } catch { /* leave it */ }
  };
  name.addEventListener("change", prefillVersion);
  const form = h("form", { class: "form", id: "start-form" },
    list,
    field("Workflow", name, "A workflow seen in this namespace, or any name a worker serves."),
    field("Version", version, "Runs are executed only by workers that registered this version (prefilled from the latest run)."),
    field("Input (JSON)", input),
    h("div", { class: "row" }, field("Idempotency key", key), field("Start at", availableAt), field("Deadline", deadlineAt)),
    error,
    h("button", { type: "submit", id: "start-submit" }, "Start run"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const parsed = parseJson(input.value, "Input");
    if (parsed.error) {
      error.textContent = parsed.error;
      input.classList.add("invalid");
      return;
    }
    input.classList.remove("invalid");
    const body = { workflow_name: name.value.trim(), input: parsed.value };
    if (version.value.trim()) body.version = version.value.trim();
    if (key.value.trim()) body.idempotency_key = key.value.trim();
    if (availableAt.value.trim()) body.available_at = availableAt.value.trim();
    if (deadlineAt.value.trim()) body.deadline_at = deadlineAt.value.trim();
    try {
      const result = await api("/api/runs", { method: "POST", body });
      location.hash = `#/run/${encodeURIComponent(result.run.id)}`;
    } catch (err) {
      error.textContent = err.message;
    }
  });
  replace(root, h("h2", {}, "Start a run"), h("section", { class: "panel" }, form));
  await prefillVersion();
}

export function signalForm({ name = "", compact = false, onSent = null } = {}) {
  const nameInput = h("input", { name: "name", class: "signal-name", required: true, value: name, placeholder: "signal name", readOnly: compact && !!name });
  const data = h("textarea", { name: "data", class: "signal-data", rows: compact ? 3 : 6, spellcheck: false }, "{}");
  const key = h("input", { name: "idempotency_key", class: "signal-key", placeholder: "optional" });
  const result = h("div", { class: "signal-result", role: "status" });
  const form = h("form", { class: `form signal-form ${compact ? "compact" : ""}` },
    compact ? null : field("Signal", nameInput),
    field("Data (JSON)", data),
    field("Idempotency key", key),
    result,
    h("button", { type: "submit", class: "signal-submit" }, "Send signal"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.classList.remove("error");
    const parsed = parseJson(data.value, "Data");
    if (parsed.error) {
      result.textContent = parsed.error;
      result.classList.add("error");
      return;
    }
    const body = { name: nameInput.value.trim(), data: parsed.value };
    if (key.value.trim()) body.idempotency_key = key.value.trim();
    try {
      const sent = await api("/api/signals", { method: "POST", body });
      const reached = sent.delivered_to;
      replace(result, reached.length ? [`Delivered to ${reached.length} run(s): `,
        reached.map((id) => h("a", { href: `#/run/${encodeURIComponent(id)}`, class: "mono" }, id.slice(0, 12)))] : "No run was waiting for it (delivered to nobody).");
      if (onSent) onSent(reached);
    } catch (err) {
      result.textContent = err.message;
      result.classList.add("error");
    }
  });
  return form;
}

export function signalPage(root) {
  replace(root, h("h2", {}, "Send a signal"),
    h("section", { class: "panel" }, h("p", { class: "muted" }, "Every run waiting on the signal's name gets it once."), signalForm()));
}
