// The app shell: hash routing between the five pages and the admin token box.
import * as backends from "./backends.js";
import * as compare from "./compare.js";
import * as live from "./live.js";
import * as models from "./models.js";
import * as playground from "./playground.js";
import { clearNotice, token } from "./api.js";

const pages = { models, backends, live, compare, playground };
let current = null;

function route() {
  const name = location.hash.slice(1) in pages ? location.hash.slice(1) : "models";
  if (current && current.unmount) current.unmount();
  clearNotice();
  const main = document.getElementById("main");
  main.replaceChildren();
  main.dataset.page = name;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  current = pages[name];
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · mlx-bridge admin`;
  current.mount(main);
}

function showTokenState() {
  document.getElementById("token-state").textContent =
    token.get() ? "token set for this tab" : "no token: admin changes are refused";
}

function setupToken() {
  const input = document.getElementById("admin-token");
  const save = () => {
    const value = input.value.trim();
    if (value) token.set(value);
    input.value = "";
    showTokenState();
    window.dispatchEvent(new Event("tokenchange"));
  };
  document.getElementById("token-save").addEventListener("click", save);
  input.addEventListener("keydown", (event) => { if (event.key === "Enter") save(); });
  document.getElementById("token-clear").addEventListener("click", () => {
    token.clear();
    showTokenState();
    window.dispatchEvent(new Event("tokenchange"));
  });
  showTokenState();
}

// The hash names the page: following the skip link ("#main") would leave this one (and what
// a form held), so it moves the focus instead.
document.querySelector("a.skip").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});

setupToken();
window.addEventListener("hashchange", route);
route();
