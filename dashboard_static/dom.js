// Building the page without innerHTML: every piece of user data becomes a text node.

const SVG_NS = "http://www.w3.org/2000/svg";
// Set as properties (live state); everything else is an attribute.
const PROPERTIES = new Set(["value", "checked", "selected", "disabled", "hidden", "readOnly", "required", "open", "spellcheck"]);

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      node.setAttribute("class", value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (PROPERTIES.has(key) && !(node instanceof SVGElement)) {
      node[key] = value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  return node;
}

// h("a", {href: "#/runs"}, "text", child, [more]) -> an element; strings become text nodes.
export function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

export function svg(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function replace(node, ...children) {
  return append(clear(node), children);
}

// Times --------------------------------------------------------------------------------------

export function parseTime(value) {
  return value ? new Date(value) : null;
}

export function absolute(value) {
  const t = parseTime(value);
  if (!t) return "—";
  return t.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function duration(ms) {
  const abs = Math.abs(ms);
  if (abs < 1000) return `${Math.round(abs)} ms`;
  if (abs < 60_000) return `${(abs / 1000).toFixed(abs < 10_000 ? 1 : 0)} s`;
  if (abs < 3_600_000) return `${Math.floor(abs / 60_000)} min ${Math.round((abs % 60_000) / 1000)} s`;
  if (abs < 86_400_000) return `${Math.floor(abs / 3_600_000)} h ${Math.round((abs % 3_600_000) / 60_000)} min`;
  return `${Math.floor(abs / 86_400_000)} d ${Math.round((abs % 86_400_000) / 3_600_000)} h`;
}

export function relative(value, now = Date.now()) {
  const t = parseTime(value);
  if (!t) return "—";
  const ms = t.getTime() - now;
  if (Math.abs(ms) < 1000) return "now";
  return ms > 0 ? `in ${duration(ms)}` : `${duration(ms)} ago`;
}

// A time shown relative, with the exact time on hover.
export function timeCell(value) {
  if (!value) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: value, title: absolute(value), class: "rel" }, relative(value));
}

export function shortId(id) {
  return id && id.length > 12 ? id.slice(0, 12) + "…" : id;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

// JSON shown as text in a <pre>, collapsible when long.
export function jsonBlock(value, { open = false, summary = null } = {}) {
  const text = JSON.stringify(value, null, 2);
  const pre = h("pre", { class: "json" }, text === undefined ? "null" : text);
  if (!summary && (text || "").length < 120) return pre;
  const label = summary || (text.length > 60 ? text.slice(0, 60).replace(/\s+/g, " ") + "…" : text);
  return h("details", { open }, h("summary", {}, label), pre);
}

// Re-render relative times every few seconds.
setInterval(() => {
  for (const node of document.querySelectorAll("time.rel")) {
    node.textContent = relative(node.getAttribute("datetime"));
  }
}, 5000);
