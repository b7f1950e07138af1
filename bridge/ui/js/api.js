// Shared helpers: the API client, the admin token, NDJSON streams, DOM building, formatting.
// Data from the server is only ever set as text (textContent), never parsed as HTML.

const TOKEN_KEY = "mlx-bridge-admin-token";

// The admin token lives in this tab's sessionStorage only: sent as an Authorization header to the
// admin API, never in a cookie (so another site cannot make the browser send it) or a URL.
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorOf(response) {
  let message = "";
  try {
    const body = await response.json();
    message = body.error && (body.error.message || body.error);
  } catch {
    message = "";
  }
  return new ApiError(response.status, String(message || `HTTP ${response.status}`));
}

// fetch + JSON; `admin` adds the token. Throws ApiError with the server's message.
export async function request(path, { method = "GET", body, admin = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (admin && token.get()) headers.Authorization = `Bearer ${token.get()}`;
  const response = await fetch(path, {
    method, headers, signal, credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// POST a streamed request; returns the Response (status checked) for `lines()`.
export async function stream(path, body, signal) {
  const response = await fetch(path, {
    method: "POST", signal, credentials: "omit",
    headers: { "Content-Type": "application/json", Accept: "application/x-ndjson" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

// The objects of an NDJSON response body, as they arrive.
export async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 1);
      if (line) yield JSON.parse(line);
    }
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

// el("button", {type: "button", onclick: f}, "text", child...): attributes, events, children.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A table: caption, header labels, and rows of cells (strings or nodes).
export function table(caption, headers, rows, attrs = {}) {
  return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    el("table", attrs,
      el("caption", {}, caption),
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c)))))));
}

const notice = () => document.getElementById("notice");

// A visible message (role=alert): errors stay until dismissed or replaced.
export function notify(message, kind = "error") {
  const box = notice();
  box.hidden = false;
  box.className = kind;
  box.replaceChildren(el("span", {}, message),
    el("button", { type: "button", class: "link", onclick: () => { box.hidden = true; } },
      "Dismiss"));
}

export function clearNotice() {
  notice().hidden = true;
}

// The message for a refused admin write: what to do about it, then the server's words.
export function adminError(error) {
  // 401: a token is configured and this one is missing or wrong; 403: none is configured (the
  // server's message says how to set one)
  if (error.status === 401) {
    const hint = token.get() ? "The admin token was refused." : "Enter the admin token first.";
    return `${hint} ${error.message}`;
  }
  return error.message;
}

export function bytes(n) {
  if (n === null || n === undefined || n === "") return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(n);
  let i = 0;
  while (value >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
  return `${value.toFixed(value >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  if (date.getUTCFullYear() > 2200) return "never"; // keep_alive < 0: Ollama's far-future date
  return date.toLocaleString();
}

export function num(value, digits = 1, unit = "") {
  if (value === null || value === undefined) return "—";
  return `${Number(value).toFixed(digits)}${unit}`;
}
