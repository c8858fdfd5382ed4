// The dashboard's hash router: #/ overview, #/runs, #/run/{id}, #/workers, #/start, #/signal.

import { h, replace } from "./dom.js";
import { startStream } from "./api.js";
import { overviewPage } from "./overview.js";
import { runsPage } from "./runs.js";
import { runPage } from "./run.js";
import { startPage, signalPage } from "./actions.js";
import { workersPage } from "./workers.js";

const root = document.getElementById("page");
let current = null;

function route() {
  if (current) current.abort();
  current = new AbortController();
  const signal = current.signal;
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  const params = new URLSearchParams(query);
  for (const link of document.querySelectorAll("nav a")) {
    const target = link.getAttribute("href").slice(1);
    link.classList.toggle("active", target === "/" ? path === "/" : path.startsWith(target));
  }
  let page;
  if (path === "/" || path === "") page = overviewPage(root, signal);
  else if (path === "/runs") page = runsPage(root, signal, params);
  else if (path.startsWith("/run/")) page = runPage(root, signal, decodeURIComponent(path.slice(5)));
  else if (path === "/workers") page = workersPage(root, signal);
  else if (path === "/start") page = startPage(root, signal);
  else if (path === "/signal") page = Promise.resolve(signalPage(root));
  else page = Promise.resolve(replace(root, h("h2", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the overview"))));
  page.catch((error) => {
    if (signal.aborted) return;
    replace(root, h("h2", {}, error.status === 404 ? "Not found" : "Something went wrong"),
      h("p", { class: "form-error", id: "page-error" }, error.message));
  });
  window.scrollTo(0, 0);
}

window.addEventListener("hashchange", route);
route();
startStream();
