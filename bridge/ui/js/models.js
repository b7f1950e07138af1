// Models: every model the bridge answers for (MLX here, the upstream, remote endpoints) in one
// table, with load / unload / pull / delete through the Ollama API every client uses.
import { bytes, el, lines, notify, request, stream, table, when } from "./api.js";

let root = null;
let pulling = null; // the AbortController of a running pull

export function mount(main) {
  root = el("section", { "aria-labelledby": "models-title" });
  main.append(root);
  root.append(
    el("div", { class: "bar" },
      el("h2", { id: "models-title" }, "Models"),
      el("button", { type: "button", onclick: refresh }, "Refresh")),
    pullBox(),
    el("div", { id: "models-table", "aria-busy": "true" }, "Loading…"));
  refresh();
}

export function unmount() {
  root = null; // a running pull goes on; its box is gone with the page
}

async function refresh() {
  if (!root) return;
  const box = root.querySelector("#models-table");
  box.setAttribute("aria-busy", "true");
  try {
    const data = await request("/api/ui/models");
    const rows = data.models.map(row);
    const caption = data.upstream
      ? `Models: this bridge and the upstream ${data.upstream}` +
        (data.upstream_reachable ? "" : " (not reachable)")
      : "Models: this bridge (no upstream configured)";
    box.replaceChildren(table(caption, ["Name", "Backend", "Where", "Size", "Capabilities",
      "Loaded", "Memory", "Expires", "Actions"], rows, { id: "models" }));
  } catch (error) {
    box.replaceChildren(el("p", { class: "error" }, `Could not list models: ${error.message}`));
  } finally {
    box.setAttribute("aria-busy", "false");
  }
}

function row(m) {
  const backend = m.kind === "remote" ? `${m.backend} (remote)` : m.backend;
  const name = m.present ? m.name : `${m.name} (not downloaded)`;
  return [
    el("span", { class: "name", dataset: { model: m.name } }, name),
    el("span", { class: `badge ${m.backend}` }, backend),
    m.where, bytes(m.size), (m.capabilities || []).join(", ") || "—",
    m.loaded ? "yes" : "no", bytes(m.memory), when(m.expires_at), actions(m)];
}

function actions(m) {
  const label = (verb) => `${verb} ${m.name}`;
  const buttons = [];
  if (m.present) {
    buttons.push(m.loaded
      ? el("button", { type: "button", "aria-label": label("Unload"),
        onclick: () => keepAlive(m.name, 0, "unloaded") }, "Unload")
      : el("button", { type: "button", "aria-label": label("Load"),
        onclick: () => keepAlive(m.name, undefined, "loaded") }, "Load"));
  }
  if (m.backend === "mlx" || m.kind === "upstream") {
    buttons.push(el("button", { type: "button", "aria-label": label("Pull"),
      onclick: () => pull(m.name) }, "Pull"));
  }
  if (m.present && m.kind !== "remote") {
    buttons.push(el("button", { type: "button", class: "danger", "aria-label": label("Delete"),
      onclick: () => remove(m.name) }, "Delete"));
  }
  return el("span", { class: "actions" }, buttons);
}

// Load = Ollama's empty generate; unload = the same with keep_alive 0.
async function keepAlive(name, keep, done) {
  const body = { model: name, stream: false };
  if (keep !== undefined) body.keep_alive = keep;
  try {
    notify(`${name}: working…`, "info");
    await request("/api/generate", { method: "POST", body });
    notify(`${name} ${done}`, "info");
  } catch (error) {
    notify(`${name}: ${error.message}`);
  }
  refresh();
}

async function remove(name) {
  if (!window.confirm(`Delete ${name} and its files?`)) return;
  try {
    await request("/api/delete", { method: "DELETE", body: { model: name } });
    notify(`${name} deleted`, "info");
  } catch (error) {
    notify(`Could not delete ${name}: ${error.message}`);
  }
  refresh();
}

function pullBox() {
  const input = el("input", { id: "pull-name", type: "text", autocomplete: "off",
    spellcheck: "false", placeholder: "e.g. llama3.2:1b" });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") pull(input.value.trim());
  });
  return el("div", { class: "pull" },
    el("label", { id: "pull-label", for: "pull-name" }, "Pull a model"), input,
    el("button", { type: "button", id: "pull-start", onclick: () => pull(input.value.trim()) },
      "Pull"),
    el("button", { type: "button", id: "pull-stop", hidden: true,
      onclick: () => pulling && pulling.abort() }, "Stop"),
    el("progress", { id: "pull-progress", max: "1", value: "0", hidden: true,
      "aria-labelledby": "pull-status" }),
    el("span", { id: "pull-status", role: "status", "aria-live": "polite" }));
}

// Stream /api/pull: the bar follows completed/total of the file being pulled.
async function pull(name) {
  if (!name || !root) return;
  if (pulling) pulling.abort();
  const controller = new AbortController();
  pulling = controller;
  const bar = root.querySelector("#pull-progress");
  const status = root.querySelector("#pull-status");
  const stop = root.querySelector("#pull-stop");
  root.querySelector("#pull-name").value = name;
  bar.hidden = false;
  stop.hidden = false;
  bar.removeAttribute("value"); // indeterminate until a size is known
  bar.dataset.updates = "0";
  status.textContent = `${name}: starting`;
  let last = null;
  try {
    const response = await stream("/api/pull", { model: name, stream: true }, controller.signal);
    for await (const line of lines(response)) {
      if (line.error) throw new Error(line.error);
      last = line;
      if (line.total) {
        bar.max = line.total;
        bar.value = line.completed || 0;
        bar.dataset.updates = String(Number(bar.dataset.updates) + 1);
        const pct = Math.floor(((line.completed || 0) * 100) / line.total);
        status.textContent = `${name}: ${line.status} ${pct}%`;
      } else {
        status.textContent = `${name}: ${line.status}`;
      }
    }
    if (!last || last.status !== "success") throw new Error("the pull ended without success");
    bar.max = 1;
    bar.value = 1;
    status.textContent = `${name}: success`;
  } catch (error) {
    status.textContent = `${name}: ${controller.signal.aborted ? "stopped" : "failed"}`;
    if (!controller.signal.aborted) notify(`Pull of ${name} failed: ${error.message}`);
  } finally {
    if (pulling === controller) pulling = null;
    stop.hidden = true;
    refresh();
  }
}
