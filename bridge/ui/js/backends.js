// Backends: the admin API's rows (create, edit, toggle, delete, priority) and, per model, the
// plan a request follows now. Reads and writes send the admin token as a header (api.js).
import { adminError, el, notify, request, table } from "./api.js";

const API = "/api/llm-backends";
let root = null;

export function mount(main) {
  root = el("section", { "aria-labelledby": "backends-title" });
  main.append(root);
  root.append(
    el("div", { class: "bar" },
      el("h2", { id: "backends-title" }, "Backends"),
      el("button", { type: "button", onclick: refresh }, "Refresh")),
    el("p", { class: "hint" }, "An enabled row overrides the mapping file for its model; the ",
      "highest priority is tried first, the others follow as fallbacks. Changes apply to the ",
      "next request."),
    el("div", { id: "rows" }, "Loading…"),
    form(),
    el("h3", { id: "plans-title" }, "Effective plan per model"),
    el("div", { id: "plans" }, "Loading…"));
  window.addEventListener("tokenchange", refresh);
  refresh();
}

export function unmount() {
  window.removeEventListener("tokenchange", refresh);
  root = null;
}

async function refresh() {
  if (!root) return;
  const box = root.querySelector("#rows");
  let rows = [];
  try {
    rows = await request(API, { admin: true });
    box.replaceChildren(rowsTable(rows));
  } catch (error) {
    box.replaceChildren(el("p", { class: "error", role: "status" },
      `The rows cannot be read: ${adminError(error)}`));
  }
  plans(rows);
}

function rowsTable(rows) {
  if (!rows.length) return el("p", {}, "No admin rows: every model follows the mapping file.");
  return table("Admin backend rows", ["Id", "Model", "Type", "Endpoint", "MLX weights",
    "Enabled", "Priority", "Requests", "Errors", "Avg tok/s", "Avg latency", "Actions"],
  rows.map((r) => [String(r.id), r.model_name, r.backend_type, r.endpoint_url || "default",
    r.mlx_model || "—", r.enabled ? "yes" : "no", String(r.priority),
    String(r.total_requests), String(r.total_errors),
    r.avg_tokens_per_sec === null ? "—" : String(r.avg_tokens_per_sec),
    r.avg_latency_ms === null ? "—" : `${r.avg_latency_ms} ms`, actions(r)]),
  { id: "backend-rows" });
}

function actions(r) {
  const what = `row ${r.id} (${r.model_name} ${r.backend_type})`;
  return el("span", { class: "actions" },
    el("button", { type: "button", "aria-pressed": r.enabled ? "true" : "false",
      "aria-label": `${r.enabled ? "Disable" : "Enable"} ${what}`, dataset: { toggle: r.id },
      onclick: () => write(`${API}/${r.id}/toggle`, "POST", undefined,
        `${what} ${r.enabled ? "disabled" : "enabled"}`) },
    r.enabled ? "Disable" : "Enable"),
    el("button", { type: "button", "aria-label": `Edit ${what}`, onclick: () => edit(r) },
      "Edit"),
    el("button", { type: "button", class: "danger", "aria-label": `Delete ${what}`,
      onclick: () => window.confirm(`Delete ${what}?`) &&
        write(`${API}/${r.id}`, "DELETE", undefined, `${what} deleted`) }, "Delete"));
}

// Every admin write goes through here: a refusal (no or wrong token) is shown, never swallowed.
async function write(path, method, body, done) {
  try {
    await request(path, { method, body, admin: true });
    notify(done, "info");
    return true;
  } catch (error) {
    notify(`Not saved: ${adminError(error)}`);
    return false;
  } finally {
    refresh();
  }
}

const FIELDS = [
  ["model_name", "Model name", "text", true],
  ["backend_type", "Backend type", "select", true],
  ["endpoint_url", "Endpoint URL (empty: the default upstream)", "url"],
  ["mlx_model", "MLX weights (repo or path; empty: the mapping's)", "text"],
  ["priority", "Priority (higher first)", "number"],
  ["enabled", "Enabled", "checkbox"],
  ["max_tokens", "Max tokens default", "number"],
  ["temperature_default", "Temperature default", "number"],
  ["timeout_seconds", "Timeout (s)", "number"],
  ["api_key_env", "Key variable (MLX_BRIDGE_KEY_…)", "text"],
  ["description", "Description", "text"],
];

function field([name, label, type, required]) {
  const id = `f-${name}`;
  let input;
  if (type === "select") {
    input = el("select", { id, name }, ["mlx", "ollama", "auto"].map((v) =>
      el("option", { value: v }, v)));
  } else if (type === "checkbox") {
    input = el("input", { id, name, type: "checkbox", checked: true });
  } else {
    input = el("input", { id, name, type, autocomplete: "off", required: !!required,
      step: name === "temperature_default" || name === "timeout_seconds" ? "any" : undefined });
  }
  return el("div", { class: `field ${type}` }, el("label", { for: id }, label), input);
}

function form() {
  return el("section", { id: "row-form", class: "card", "aria-labelledby": "form-title" },
    el("h3", { id: "form-title" }, "New row"),
    el("input", { type: "hidden", id: "f-id" }),
    el("div", { class: "fields" }, FIELDS.map(field)),
    el("div", { class: "actions" },
      el("button", { type: "button", id: "row-save", onclick: save }, "Create"),
      el("button", { type: "button", onclick: reset }, "Clear")));
}

function values() {
  const out = {};
  for (const [name, , type] of FIELDS) {
    const input = root.querySelector(`#f-${name}`);
    if (type === "checkbox") out[name] = input.checked;
    else if (input.value.trim() === "") out[name] = null;
    else if (type === "number") out[name] = Number(input.value);
    else out[name] = input.value.trim();
  }
  if (out.description === null) out.description = "";
  if (out.priority === null) out.priority = 0;
  return out;
}

async function save() {
  const id = root.querySelector("#f-id").value;
  const body = values();
  if (!id) {
    for (const key of Object.keys(body)) if (body[key] === null) delete body[key];
  }
  const ok = id
    ? await write(`${API}/${id}`, "PUT", body, `row ${id} saved`)
    : await write(API, "POST", body, `row for ${body.model_name} created`);
  if (ok) reset();
}

function edit(r) {
  root.querySelector("#f-id").value = r.id;
  for (const [name, , type] of FIELDS) {
    const input = root.querySelector(`#f-${name}`);
    if (type === "checkbox") input.checked = !!r[name];
    else input.value = r[name] === null || r[name] === undefined ? "" : r[name];
  }
  root.querySelector("#form-title").textContent = `Edit row ${r.id}`;
  root.querySelector("#row-save").textContent = "Save";
  root.querySelector("#f-model_name").focus();
}

function reset() {
  if (!root) return;
  root.querySelector("#f-id").value = "";
  for (const [name, , type] of FIELDS) {
    const input = root.querySelector(`#f-${name}`);
    if (type === "checkbox") input.checked = true;
    else if (type === "select") input.value = "mlx";
    else input.value = "";
  }
  root.querySelector("#form-title").textContent = "New row";
  root.querySelector("#row-save").textContent = "Create";
}

// The plan of each model that has a row or a mapping: the targets in the order tried now.
async function plans(rows) {
  const box = root && root.querySelector("#plans");
  if (!box) return;
  let names = rows.map((r) => r.model_name);
  try {
    const listed = await request("/api/ui/models");
    names = names.concat(listed.models.filter((m) => m.backend === "mlx").map((m) => m.name));
  } catch {
    // the rows' models are still shown
  }
  names = [...new Set(names)].sort();
  const items = await Promise.all(names.map(async (name) => {
    try {
      const found = await request(`${API}/model/${encodeURIComponent(name)}`);
      const targets = found.plan.targets.map((t) => t.backend === "mlx"
        ? `mlx (${t.mlx_model || "mapped weights"})` : `ollama @ ${t.endpoint_url}`);
      return [name, found.source, `${found.plan.policy}`, targets.join(" → ") || "—"];
    } catch (error) {
      return [name, "—", "—", error.message];
    }
  }));
  if (!root) return;
  box.replaceChildren(items.length
    ? table("Effective plan per model", ["Model", "Decided by", "Policy", "Targets, in order"],
      items, { id: "plans-table" })
    : el("p", {}, "No models with rows or mappings."));
}
