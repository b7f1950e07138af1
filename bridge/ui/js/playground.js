// Playground: chat with any model, streamed; shows which backend answered (the bridge's
// X-Bridge-Backend header) and the final chunk's metrics.
import { el, lines, num, request, stream } from "./api.js";

let root = null;
let history = [];
let controller = null;

export function mount(main) {
  root = el("section", { "aria-labelledby": "play-title" });
  main.append(root);
  history = [];
  const prompt = el("textarea", { id: "pg-prompt", rows: "3", required: true });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) send();
  });
  root.append(
    el("div", { class: "bar" }, el("h2", { id: "play-title" }, "Playground")),
    el("div", { class: "filters" },
      el("label", { for: "pg-model" }, "Model"), el("select", { id: "pg-model" }),
      el("label", { for: "pg-max" }, "Max tokens"),
      el("input", { id: "pg-max", type: "number", min: "1", value: "64" }),
      el("button", { type: "button", onclick: clear }, "New chat")),
    el("div", { id: "pg-log", class: "log", role: "log", "aria-live": "polite",
      "aria-label": "Conversation" }),
    el("div", { class: "field" }, el("label", { for: "pg-prompt" },
      "Message (Ctrl+Enter sends)"), prompt),
    el("div", { class: "actions" },
      el("button", { type: "button", id: "pg-send", onclick: send }, "Send"),
      el("button", { type: "button", id: "pg-stop", disabled: true,
        onclick: () => controller && controller.abort() }, "Stop")),
    el("dl", { id: "pg-metrics", class: "metrics-list" }));
  models();
}

export function unmount() {
  if (controller) controller.abort();
  root = null;
}

async function models() {
  const select = root.querySelector("#pg-model");
  try {
    const data = await request("/api/ui/models");
    const names = data.models.filter((m) => m.present).map((m) => m.name);
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  } catch (error) {
    select.replaceChildren(el("option", { value: "" }, `(${error.message})`));
  }
}

function clear() {
  history = [];
  root.querySelector("#pg-log").replaceChildren();
  root.querySelector("#pg-metrics").replaceChildren();
}

function message(role, text) {
  const body = el("div", { class: "text" }, text);
  root.querySelector("#pg-log").append(
    el("div", { class: `msg ${role}` }, el("span", { class: "role" }, role), body));
  return body;
}

async function send() {
  const prompt = root.querySelector("#pg-prompt");
  const model = root.querySelector("#pg-model").value;
  const text = prompt.value.trim();
  if (!text || !model || controller) return;
  prompt.value = "";
  history.push({ role: "user", content: text });
  message("user", text);
  const out = message("assistant", "");
  out.setAttribute("aria-busy", "true");
  controller = new AbortController();
  root.querySelector("#pg-send").disabled = true;
  root.querySelector("#pg-stop").disabled = false;
  const started = performance.now();
  let first = null;
  let final = null;
  let backend = "—";
  let reply = "";
  try {
    const response = await stream("/api/chat", {
      model, messages: history, stream: true,
      options: { num_predict: Number(root.querySelector("#pg-max").value) || 64 },
    }, controller.signal);
    backend = response.headers.get("X-Bridge-Backend") || "—";
    for await (const chunk of lines(response)) {
      if (chunk.error) throw new Error(chunk.error);
      const piece = (chunk.message && chunk.message.content) || "";
      if (piece && first === null) first = performance.now() - started;
      reply += piece;
      out.textContent = reply;
      out.dataset.chunks = String(Number(out.dataset.chunks || 0) + 1);
      if (chunk.done) final = chunk;
    }
    history.push({ role: "assistant", content: reply });
  } catch (error) {
    out.textContent = reply;
    out.append(el("span", { class: "error" },
      controller.signal.aborted ? " [stopped]" : ` [error: ${error.message}]`));
  } finally {
    out.setAttribute("aria-busy", "false");
    controller = null;
    if (root) {
      root.querySelector("#pg-send").disabled = false;
      root.querySelector("#pg-stop").disabled = true;
      metrics(backend, first, final);
    }
  }
}

function metrics(backend, firstMs, final) {
  const ns = (v) => (v ? v / 1e6 : null);
  const items = [["Served by", backend], ["Time to first token", num(firstMs, 0, " ms")]];
  if (final) {
    const speed = final.eval_duration ? final.eval_count / (final.eval_duration / 1e9) : null;
    items.push(["Done reason", final.done_reason || "—"],
      ["Prompt tokens", String(final.prompt_eval_count ?? "—")],
      ["Generated tokens", String(final.eval_count ?? "—")],
      ["Tokens per second", num(speed, 1)],
      ["Load", num(ns(final.load_duration), 0, " ms")],
      ["Total", num(ns(final.total_duration), 0, " ms")]);
  }
  root.querySelector("#pg-metrics").replaceChildren(...items.flatMap(([k, v]) =>
    [el("dt", {}, k), el("dd", { dataset: { metric: k } }, v)]));
}
