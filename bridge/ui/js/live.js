// Live: per-backend requests/s, tokens/s, TTFT and error rate over the last minutes (uPlot
// charts, refreshed every 2 s without a reload), the engine's queue, endpoint health and the
// newest requests. Data: /api/ui/live (the request log) and /health (reachability).
import { bytes, el, num, request, table, when } from "./api.js";

const EVERY_MS = 2000;
const HEALTH_EVERY = 5; // polls between /health calls (it asks the upstream)
const CHARTS = [
  ["requests_per_s", "Requests per second", 2],
  ["tokens_per_s", "Tokens per second (generated)", 1],
  ["ttft_ms", "Time to first token (ms)", 0],
  ["error_rate", "Error rate", 2],
];
const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f"];

let root = null;
let timer = null;
let polls = 0;
let paused = false;
let charts = {}; // metric -> {plot, labels}

export function mount(main) {
  root = el("section", { "aria-labelledby": "live-title" });
  main.append(root);
  paused = false;
  polls = 0;
  charts = {};
  root.append(
    el("div", { class: "bar" },
      el("h2", { id: "live-title" }, "Live"),
      el("button", { type: "button", id: "live-pause", "aria-pressed": "false",
        onclick: togglePause }, "Pause updates"),
      el("span", { id: "live-updated", class: "hint", role: "status" })),
    el("div", { id: "tiles", class: "tiles" }),
    el("div", { class: "charts" }, CHARTS.map(([key, title]) =>
      el("figure", { class: "chart", id: `chart-${key}`, dataset: { points: "0" } },
        el("figcaption", {}, title),
        el("div", { class: "plot" }),
        el("p", { class: "summary" }, "No requests in this window yet.")))),
    el("h3", {}, "Endpoint health"),
    el("div", { id: "health" }, "Loading…"),
    el("h3", {}, "Recent requests"),
    el("div", { id: "recent" }, "Loading…"));
  tick();
}

export function unmount() {
  clearTimeout(timer);
  for (const { plot } of Object.values(charts)) plot.destroy();
  charts = {};
  root = null;
}

function togglePause(event) {
  paused = !paused;
  event.target.setAttribute("aria-pressed", String(paused));
  event.target.textContent = paused ? "Resume updates" : "Pause updates";
  if (!paused) tick();
}

async function tick() {
  clearTimeout(timer);
  if (!root || paused) return;
  try {
    const data = await request("/api/ui/live?window=300&step=5");
    if (!root) return;
    render(data);
    if (polls % HEALTH_EVERY === 0) health(data.endpoints);
    polls += 1;
    root.querySelector("#live-updated").textContent =
      `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (root) root.querySelector("#live-updated").textContent = `update failed: ${error.message}`;
  }
  if (root && !paused) timer = setTimeout(tick, EVERY_MS);
}

function render(data) {
  const e = data.engine;
  const tile = (label, value) => el("div", { class: "tile" },
    el("span", { class: "tile-label" }, label), el("span", { class: "tile-value" }, value));
  root.querySelector("#tiles").replaceChildren(
    tile("Engine", e.state),
    tile("Queue depth", String(e.queued)),
    tile("Active jobs", `${e.active} / ${e.num_parallel}`),
    tile("Loaded models", data.loaded.map((m) => `${m.model} (${bytes(m.size)})`).join(", ")
      || "none"),
    tile("Engine restarts", String(e.restarts)));
  for (const [key, title, digits] of CHARTS) chart(key, title, digits, data);
  root.querySelector("#recent").replaceChildren(recent(data.recent));
}

// One chart: x = bucket times, one line per backend; rebuilt only when the backends change.
function chart(key, title, digits, data) {
  const figure = root.querySelector(`#chart-${key}`);
  const labels = data.series.map((s) => s.label);
  const rows = [data.times, ...data.series.map((s) => s[key])];
  const width = Math.max(260, figure.querySelector(".plot").clientWidth || 400);
  let entry = charts[key];
  if (!entry || entry.labels.join("\n") !== labels.join("\n") || entry.width !== width) {
    if (entry) entry.plot.destroy();
    const series = [{}, ...labels.map((label, i) => ({
      label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
      // TTFT and the error rate have gaps (no requests): a lone bucket shows as a dot
      points: { show: key === "ttft_ms" || key === "error_rate", size: 6 },
      value: (u, v) => (v === null || v === undefined ? "—" : v.toFixed(digits)),
    }))];
    const plot = new window.uPlot({
      width, height: 180, series,
      scales: { x: { time: true }, y: key === "error_rate" ? { range: [0, 1] } : {} },
      axes: [{}, { size: 50 }], legend: { live: false },
    }, rows, figure.querySelector(".plot"));
    entry = charts[key] = { plot, labels, width };
  } else {
    entry.plot.setData(rows);
  }
  const points = data.series.reduce((n, s) => n + s[key].filter((v) => v).length, 0);
  figure.dataset.points = String(points);
  figure.dataset.requests = String(data.series.reduce((n, s) => n + s.requests, 0));
  figure.querySelector(".summary").textContent = data.series.length
    ? data.series.map((s) => `${s.label}: ${s.requests} requests, ${s.errors} errors, ` +
      `latest ${latest(s[key], digits)}`).join("; ")
    : "No requests in this window yet.";
  figure.querySelector(".plot").setAttribute("aria-label", `${title} chart`);
  figure.querySelector(".plot").setAttribute("role", "img");
}

function latest(values, digits) {
  for (let i = values.length - 1; i >= 0; i -= 1) {
    if (values[i] !== null && values[i] !== 0) return Number(values[i]).toFixed(digits);
  }
  return "—";
}

function recent(records) {
  if (!records.length) return el("p", {}, "No requests recorded yet.");
  return table("Recent requests, newest first", ["Time", "Model", "Backend", "Status",
    "Latency", "TTFT", "Tokens", "Tok/s", "Fallback from", "Error"],
  records.map((r) => [when(r.ts), r.model,
    r.endpoint ? `${r.backend}@${r.endpoint}` : r.backend,
    el("span", { class: `status ${r.status}` }, r.status), num(r.latency_ms, 0, " ms"),
    num(r.ttft_ms, 0, " ms"), String(r.eval_tokens), num(r.tokens_per_sec, 1),
    r.fallback_from || "—", r.error || "—"]), { id: "recent-table" });
}

async function health(endpoints) {
  let data = null;
  try {
    data = await request("/health");
  } catch (error) {
    data = { error: error.message };
  }
  if (!root) return;
  const rows = [];
  if (data.backends) {
    const mlx = data.backends.mlx;
    rows.push(["MLX engine", mlx.available ? "up" : "down", `device ${mlx.device}`]);
    const up = data.backends.ollama;
    if (up.upstream) {
      rows.push([`upstream ${up.upstream}`, up.reachable ? "reachable" : "unreachable",
        up.error || "—"]);
    }
  } else {
    rows.push(["bridge", "error", data.error]);
  }
  for (const [url, s] of Object.entries(endpoints || {})) {
    rows.push([`endpoint ${url}`, s.state === "open" ? `breaker open (${s.retry_in_s} s)`
      : "breaker closed", s.last_error || `${s.failures} failures`]);
  }
  root.querySelector("#health").replaceChildren(
    table("Engine and endpoint health", ["What", "State", "Detail"], rows, { id: "health-table" }));
}
