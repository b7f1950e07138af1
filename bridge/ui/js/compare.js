// Compare: /api/performance/comparison as bar charts, the backends of one model side by side.
// Plain HTML bars (text values beside them), so screen readers read the numbers too.
import { el, num, request } from "./api.js";

const METRICS = [
  ["avg_tokens_per_sec", "Tokens per second (avg)", 1, "", true],
  ["avg_ttft_ms", "Time to first token (avg)", 0, " ms", false],
  ["avg_latency_ms", "Latency (avg)", 0, " ms", false],
  ["p50_latency_ms", "Latency p50", 0, " ms", false],
  ["p95_latency_ms", "Latency p95", 0, " ms", false],
  ["error_rate", "Error rate", 3, "", false],
  ["requests", "Requests", 0, "", true],
];
const SINCE = [["", "all time"], ["3600", "last hour"], ["86400", "last day"]];
let root = null;

export function mount(main) {
  root = el("section", { "aria-labelledby": "compare-title" });
  main.append(root);
  const model = el("input", { id: "cmp-model", type: "text", autocomplete: "off",
    placeholder: "all models" });
  const since = el("select", { id: "cmp-since" }, SINCE.map(([v, t]) => el("option",
    { value: v }, t)));
  model.addEventListener("keydown", (event) => { if (event.key === "Enter") refresh(); });
  since.addEventListener("change", refresh);
  root.append(
    el("div", { class: "bar" }, el("h2", { id: "compare-title" }, "Compare backends")),
    el("div", { class: "filters" },
      el("label", { for: "cmp-model" }, "Model"), model,
      el("label", { for: "cmp-since" }, "Since"), since,
      el("button", { type: "button", onclick: refresh }, "Show")),
    el("div", { id: "comparison" }, "Loading…"));
  refresh();
}

export function unmount() {
  root = null;
}

async function refresh() {
  if (!root) return;
  const params = new URLSearchParams();
  const model = root.querySelector("#cmp-model").value.trim();
  const seconds = root.querySelector("#cmp-since").value;
  if (model) params.set("model", model);
  if (seconds) params.set("since", new Date(Date.now() - seconds * 1000).toISOString());
  const box = root.querySelector("#comparison");
  try {
    const data = await request(`/api/performance/comparison?${params}`);
    box.replaceChildren(...(data.models.length ? data.models.map(modelCard)
      : [el("p", {}, "No requests recorded for this choice yet.")]));
  } catch (error) {
    box.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

function modelCard(entry) {
  const label = (b) => (b.endpoint ? `${b.backend}@${b.endpoint}` : b.backend);
  return el("article", { class: "card compare", dataset: { model: entry.model } },
    el("h3", {}, entry.model),
    el("div", { class: "metrics" }, METRICS.map(([key, title, digits, unit, higher]) => {
      const values = entry.backends.map((b) => b[key]);
      const max = Math.max(0, ...values.filter((v) => v !== null));
      return el("figure", { class: "bars" },
        el("figcaption", {}, title, el("span", { class: "hint" },
          higher ? " (higher is better)" : " (lower is better)")),
        entry.backends.map((b, i) => {
          const bar = el("span", { class: `fill c${i % 6}` });
          bar.style.width = max > 0 && b[key] !== null ? `${(100 * b[key]) / max}%` : "0";
          return el("div", { class: "bar-row" },
            el("span", { class: "bar-label" }, label(b)),
            el("span", { class: "track" }, bar),
            el("span", { class: "bar-value" }, num(b[key], digits, unit)));
        }));
    })));
}
