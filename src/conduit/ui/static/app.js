// The dashboard's shell: login, navigation and the hash router. Pages live in pages_*.js.

import {h, clear, errorBox, field} from "./dom.js";
import {clearSession, getKey, getWho, onUnauthorized, setSession, whoami, Unauthorized} from "./api.js";
import {overviewPage} from "./pages_overview.js";
import {requestsPage, requestPage} from "./pages_requests.js";
import {collectionsPage, collectionPage} from "./pages_collections.js";
import {playgroundPage} from "./pages_playground.js";
import {keysPage, usagePage} from "./pages_admin.js";

const NAV = [
  {path: "overview", label: "Overview"},
  {path: "requests", label: "Requests"},
  {path: "collections", label: "Collections"},
  {path: "playground", label: "Playground"},
  {path: "keys", label: "Keys", admin: true},
  {path: "usage", label: "Usage"},
];

const ROUTES = [
  [/^overview$/, overviewPage],
  [/^requests$/, requestsPage],
  [/^requests\/(.+)$/, requestPage],
  [/^collections$/, collectionsPage],
  [/^collections\/(.+)$/, collectionPage],
  [/^playground$/, playgroundPage],
  [/^keys$/, keysPage, {admin: true}],
  [/^usage$/, usagePage],
];

const root = document.getElementById("app");
let cleanup = null;
let generation = 0;

function stopPage() {
  generation += 1;
  if (cleanup) {
    try { cleanup(); } catch (exc) { console.error(exc); }
  }
  cleanup = null;
}

// -- login ---------------------------------------------------------------------------------------

function showLogin(message) {
  stopPage();
  const input = h("input", {id: "login-key", type: "password", autocomplete: "off", spellcheck: "false",
    placeholder: "cdk-...", required: true, "data-testid": "login-key"});
  const error = h("div", {"data-testid": "login-error"}, message ? errorBox(message) : null);
  const button = h("button", {type: "submit", class: "primary", "data-testid": "login-submit"}, "Sign in");
  const form = h("form", {class: "login-form", "data-testid": "login-form"},
    h("h1", null, "Conduit"),
    h("p", {class: "muted"}, "Sign in with an API key: the admin key sees every tenant, a tenant's key only its own."),
    field("API key", input),
    button, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    clear(error);
    try {
      const who = await whoami(key);
      setSession(key, who);
      if (!location.hash || location.hash === "#/" || location.hash === "#/login") location.hash = "#/overview";
      start();
    } catch (exc) {
      // A refused key already brought us back here with its message.
      if (!(exc instanceof Unauthorized)) clear(error, errorBox(`Could not sign in: ${exc.message}`));
    } finally {
      button.disabled = false;
    }
  });
  clear(root, h("main", {class: "login", "data-testid": "login"}, form));
  input.focus();
}

onUnauthorized((message) => {
  clearSession();
  showLogin(message);
});

function logout() {
  clearSession();
  showLogin("Signed out.");
}

// -- shell and router ----------------------------------------------------------------------------

function currentPath() {
  return location.hash.replace(/^#\/?/, "") || "overview";
}

function shell(who) {
  const nav = h("nav", {class: "nav", "aria-label": "Pages"},
    NAV.filter((item) => !item.admin || who.admin).map((item) =>
      h("a", {href: `#/${item.path}`, "data-testid": `nav-${item.path}`, "data-path": item.path}, item.label)));
  const identity = who.admin ? "admin" : `tenant ${who.tenant ?? "(unknown)"}`;
  const header = h("header", {class: "topbar"},
    h("a", {class: "brand", href: "#/overview"}, "Conduit"),
    nav,
    h("div", {class: "who"},
      h("span", {class: who.admin ? "badge badge-admin" : "badge", "data-testid": "identity"}, identity),
      h("button", {type: "button", class: "link-button", "data-testid": "logout", onclick: logout}, "Log out")));
  const view = h("main", {id: "view", class: "view", tabindex: "-1"});
  clear(root, header, view);
  return {nav, view};
}

let frame = null;

async function render() {
  const who = getWho();
  if (!getKey() || !who) {
    showLogin();
    return;
  }
  if (!frame || !root.contains(frame.view)) frame = shell(who);
  stopPage();
  const mine = generation;
  const path = currentPath();
  for (const a of frame.nav.querySelectorAll("a")) {
    const active = path === a.dataset.path || path.startsWith(`${a.dataset.path}/`);
    a.classList.toggle("active", active);
    if (active) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const view = frame.view;
  clear(view);
  const match = ROUTES.map(([re, page, opts]) => [path.match(re), page, opts || {}]).find(([m]) => m);
  if (!match) {
    clear(view, h("h1", null, "Not found"), h("p", null, "No such page. ", h("a", {href: "#/overview"}, "Overview")));
    return;
  }
  const [m, page, opts] = match;
  if (opts.admin && !who.admin) {
    clear(view, h("h1", null, "Admins only"), h("p", {"data-testid": "forbidden"}, "This page needs the admin key."));
    return;
  }
  const params = m.slice(1).map((p) => decodeURIComponent(p));
  const ctx = {who, params, alive: () => generation === mine};
  try {
    const stop = await page(view, ctx);
    if (ctx.alive()) cleanup = typeof stop === "function" ? stop : null;
    else if (typeof stop === "function") stop();
  } catch (exc) {
    if (exc instanceof Unauthorized || exc.name === "AbortError") return;
    console.error(exc);
    if (ctx.alive()) view.append(errorBox(`This page failed: ${exc.message}`));
  }
}

function start() {
  frame = null;
  render();
}

window.addEventListener("hashchange", render);
start();
