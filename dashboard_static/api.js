// The JSON API and the live stream. The token (when the dashboard has one) is asked once and
// kept in sessionStorage for this tab; it goes out as a bearer header, and as ?token= for the
// stream only (EventSource cannot send headers).

const TOKEN_KEY = "ow-es-dashboard-token";
let askingForToken = null;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function askForToken(message) {
  if (askingForToken) return askingForToken;
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  document.getElementById("token-message").textContent = message;
  input.value = "";
  dialog.hidden = false;
  input.focus();
  askingForToken = new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      dialog.hidden = true;
      askingForToken = null;
      resolve();
      restartStream();
    };
  });
  return askingForToken;
}

export async function api(path, { method = "GET", body = undefined } = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (response.status === 401) {
      await askForToken(token() ? "That token was not accepted. Try again:" : "This dashboard needs its access token (OW_ES_DASHBOARD_TOKEN):");
      continue;
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = null;
    }
    if (!response.ok) {
      throw new ApiError(response.status, (payload && payload.error) || `HTTP ${response.status}`);
    }
    return payload;
  }
}

// Live events ----------------------------------------------------------------------------------

export const EVENT_TYPES = [
  "run_created", "run_claimed", "step_started", "step_completed", "step_failed",
  "retry_scheduled", "run_sleeping", "run_waiting", "run_woken", "run_released",
  "signal_sent", "signal_received", "child_started", "child_finished", "run_completed",
  "run_failed", "run_canceled", "run_resumed",
];

const listeners = new Set();
const seen = new Set(); // "run_id:seq": a batch cut off by a reconnect may come again
let source = null;
let lastCursor = null;

export function onEvent(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function setLive(state) {
  const badge = document.getElementById("live");
  badge.className = `live ${state}`;
  badge.textContent = state === "on" ? "live" : state === "off" ? "reconnecting…" : "connecting…";
  badge.title = state === "on" ? "Following the event log" : "The live stream is reconnecting";
}

export function startStream() {
  const params = new URLSearchParams();
  if (lastCursor) params.set("after", lastCursor);
  if (token()) params.set("token", token());
  const query = params.toString();
  source = new EventSource(`/api/stream${query ? "?" + query : ""}`);
  setLive("connecting");
  source.addEventListener("ready", (message) => {
    setLive("on");
    if (message.lastEventId) lastCursor = message.lastEventId;
  });
  source.onopen = () => setLive("on");
  source.onerror = async () => {
    setLive("off");
    if (source.readyState === EventSource.CLOSED) {
      // The server refused (a 401 ends EventSource for good): check the token, then retry.
      source = null;
      try {
        await api("/api/counts");
      } catch {
        /* shown elsewhere */
      }
      setTimeout(() => { if (!source) startStream(); }, 1000);
    }
  };
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => {
      if (message.lastEventId) lastCursor = message.lastEventId;
      const event = JSON.parse(message.data);
      const key = `${event.run_id}:${event.seq}`;
      if (seen.has(key)) return;
      seen.add(key);
      if (seen.size > 20000) seen.clear();
      for (const listener of listeners) listener(event);
    });
  }
}

export function restartStream() {
  if (source) source.close();
  source = null;
  startStream();
}
