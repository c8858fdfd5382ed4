// Why a run waits, in words, from its row's waiting_for (and status, lease, available_at).

import { relative, absolute } from "./dom.js";

export function whyItWaits(run, now = Date.now()) {
  const w = run.waiting_for;
  if (run.status === "completed" || run.status === "failed" || run.status === "canceled") return null;
  if (w) {
    const until = w.until ? ` (until ${absolute(w.until)}, ${relative(w.until, now)})` : "";
    switch (w.kind) {
      case "sleep":
        return `sleeping until ${absolute(w.until)} (${relative(w.until, now)})${w.step ? ` in step “${w.step}”` : ""}`;
      case "signal":
        return `waiting for signal “${w.name}”${until}`;
      case "child":
        return `waiting for child run ${w.run_id}${until}`;
      case "retry":
        return `retry of ${w.step ? `step “${w.step}”` : "the workflow"} at ${absolute(w.until)} (${relative(w.until, now)})`;
      default:
        return `waiting (${w.kind})`;
    }
  }
  if (run.lease_until && run.worker_id) return `running on worker ${run.worker_id} (lease ${relative(run.lease_until, now)})`;
  if (run.available_at) {
    const at = Date.parse(run.available_at);
    return at > now ? `scheduled for ${absolute(run.available_at)} (${relative(run.available_at, now)})` : `ready since ${relative(run.available_at, now)}, waiting for a worker`;
  }
  return "no worker, no timer";
}
