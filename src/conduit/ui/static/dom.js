// DOM building without HTML strings: every piece of text goes in as a text node, so prompts,
// documents and answers (attacker-controlled) can never become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(el, props) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (name === "value" || name === "checked" || name === "selected" || name === "disabled") {
      el[name] = value;
    } else if (name === "style") {
      throw new Error("set styles through el.style (the page's policy forbids style attributes)");
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h("div", {class: "x", "data-testid": "y", onclick: f}, "text", child, [more]) */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  apply(el, props);
  return append(el, children);
}

export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, props);
  return append(el, children);
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** The hash link of a page; ids are encoded, so a strange id cannot escape the fragment. */
export function link(text, ...parts) {
  return h("a", {href: route(...parts)}, text);
}

export function route(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
}

export function noData(text = "no data") {
  return h("p", {class: "no-data", "data-testid": "no-data"}, text);
}

export function errorBox(text) {
  return h("p", {class: "error-box", role: "alert"}, text);
}

export function card(title, ...children) {
  return h("section", {class: "card"}, title ? h("h2", null, title) : null, ...children);
}

/** A labelled form field: <label for=id>Text</label> + the control (given its id here). */
export function field(labelText, control, extraClass) {
  if (!control.id) throw new Error("a field's control needs an id");
  return h("div", {class: ["field", extraClass]}, h("label", {for: control.id}, labelText), control);
}

export function select(id, options, value, props = {}) {
  const el = h("select", {id, name: id, ...props});
  for (const opt of options) {
    const [val, text] = Array.isArray(opt) ? opt : [opt, opt];
    el.append(h("option", {value: val}, text));
  }
  el.value = String(value ?? "");
  if (el.selectedIndex === -1 && el.options.length) el.selectedIndex = 0;
  return el;
}

/** A compact table. columns: [{label, value: row => text|Node, class}] */
export function table(columns, rows, {rowProps, testid, empty = "no data"} = {}) {
  if (!rows || rows.length === 0) return noData(empty);
  const head = h("tr", null, columns.map((c) => h("th", {class: c.class, scope: "col"}, c.label)));
  const body = rows.map((row) => h("tr", rowProps ? rowProps(row) : null,
    columns.map((c) => h("td", {class: c.class}, cell(c.value(row))))));
  return h("div", {class: "table-wrap"},
    h("table", {class: "grid", "data-testid": testid}, h("thead", null, head), h("tbody", null, body)));
}

function cell(value) {
  return value === null || value === undefined || value === "" ? h("span", {class: "muted"}, "—") : value;
}

/** <dl> of label/value pairs, skipping absent values. */
export function facts(pairs, testid) {
  const dl = h("dl", {class: "facts", "data-testid": testid});
  for (const [label, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(h("dt", null, label), h("dd", null, value));
  }
  return dl;
}

// -- formatting ----------------------------------------------------------------------------------

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "—";
  return Number(n).toLocaleString(undefined, {maximumFractionDigits: digits, minimumFractionDigits: 0});
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  const v = Number(ms);
  if (v >= 10000) return `${(v / 1000).toFixed(1)} s`;
  if (v >= 100) return `${v.toFixed(0)} ms`;
  if (v >= 10) return `${v.toFixed(1)} ms`;
  return `${v.toFixed(2)} ms`;
}

export function fmtUsd(usd) {
  if (usd === null || usd === undefined) return "—";
  const v = Number(usd);
  if (v === 0) return "$0";
  if (Math.abs(v) < 0.01) return `$${v.toPrecision(2)}`;
  return `$${v.toFixed(2)}`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function fmtPct(fraction, digits = 0) {
  if (fraction === null || fraction === undefined) return "—";
  return `${(Number(fraction) * 100).toFixed(digits)}%`;
}

/** ISO string or epoch seconds -> local "YYYY-MM-DD HH:MM:SS". */
export function fmtTime(value) {
  if (value === null || value === undefined || value === "") return "—";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const p = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())} ` +
    `${p(date.getHours())}:${p(date.getMinutes())}:${p(date.getSeconds())}`;
}

export function badge(text, kind) {
  return h("span", {class: ["badge", kind ? `badge-${kind}` : null]}, text);
}

export function statusBadge(status) {
  if (!status) return null;
  return badge(status, status === "ok" ? "ok" : status === "error" ? "error" : "warn");
}

/** A thumb icon (drawn, so that it shows without an emoji font); down is the up one turned over. */
export function thumb(direction) {
  return svg("svg", {class: "icon", viewBox: "0 0 16 16", width: 14, height: 14, "aria-hidden": "true"},
    svg("path", {d: "M1.5 7h3v7.5h-3z M5.5 7.2 8.6 1.8c1.2-.2 2.2.8 1.9 2.1L10 6.6h3.6c1 0 1.7.9 1.5 1.9l-1.1 4.8" +
      "c-.2.7-.8 1.2-1.5 1.2H5.5z", fill: "currentColor", transform: direction === "down" ? "rotate(180 8 8)" : null}));
}

export function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}
