// The request explorer (GET /admin/requests) and one request's page (GET /admin/requests/{id}):
// its fields, trace waterfall, route, retrieved chunks, prompt and answer, guards and feedback.

import {h, clear, field, select, table, facts, noData, errorBox, card, route, badge, statusBadge, thumb,
  fmtMs, fmtUsd, fmtNum, fmtTime, pretty} from "./dom.js";
import {api, listOf} from "./api.js";

const PAGE = 50;
const filters = {tenant: "", model: "", status: "", min_latency_ms: "", feedback: ""};

export async function requestsPage(view, ctx) {
  const admin = ctx.who.admin;
  const inputs = {
    tenant: h("input", {id: "f-tenant", type: "text", value: filters.tenant, placeholder: "any", "data-testid": "filter-tenant"}),
    model: h("input", {id: "f-model", type: "text", value: filters.model, placeholder: "any", list: "f-models",
      "data-testid": "filter-model"}),
    status: select("f-status", [["", "any"], "ok", "error", "client_disconnected"], filters.status,
      {"data-testid": "filter-status"}),
    min_latency_ms: h("input", {id: "f-latency", type: "number", min: "0", step: "1", value: filters.min_latency_ms,
      placeholder: "0", "data-testid": "filter-latency"}),
    feedback: select("f-feedback", [["", "any"], ["up", "thumbs up"], ["down", "thumbs down"], ["none", "none"]],
      filters.feedback, {"data-testid": "filter-feedback"}),
  };
  const models = h("datalist", {id: "f-models"});
  const form = h("form", {class: "filters", "data-testid": "request-filters"},
    admin ? field("Tenant", inputs.tenant) : null,
    field("Model", inputs.model), field("Status", inputs.status),
    field("Min latency (ms)", inputs.min_latency_ms), field("Feedback", inputs.feedback),
    h("div", {class: "field actions"}, h("button", {type: "submit", class: "primary", "data-testid": "apply-filters"}, "Apply"),
      h("button", {type: "reset", "data-testid": "reset-filters"}, "Reset")),
    models);
  const results = h("div", {"data-testid": "requests-results"});
  const more = h("div", {class: "more"});
  clear(view, h("div", {class: "page-head"}, h("h1", null, "Requests")), form, results, more);

  api("/v1/models").then((r) => {
    for (const m of listOf(r) || []) models.append(h("option", {value: m.id}));
  }).catch(() => {});

  let rows = [];
  const load = async (before) => {
    const query = new URLSearchParams({limit: String(PAGE)});
    for (const [name, value] of Object.entries(filters)) {
      if (value !== "" && (name !== "tenant" || admin)) query.set(name, value);
    }
    if (before) query.set("before", before);
    const result = await api(`/admin/requests?${query}`);
    if (!ctx.alive()) return;
    if (!result.ok) {
      clear(results, result.status === 404 ? noData("no data: this server has no request log endpoint")
        : errorBox(`Requests failed: ${result.error}`));
      clear(more);
      return;
    }
    rows = before ? rows.concat(result.data.data || []) : (result.data.data || []);
    clear(results, requestTable(rows, admin),
      h("p", {class: "muted", "data-testid": "request-count"}, `${rows.length} request(s) shown`));
    const next = result.data.has_more ? result.data.next_before : null;
    clear(more, next ? h("button", {type: "button", "data-testid": "load-more", onclick: () => load(next)}, "Load more") : null);
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const [name, input] of Object.entries(inputs)) filters[name] = input.value.trim();
    load();
  });
  form.addEventListener("reset", () => {
    for (const name of Object.keys(filters)) filters[name] = "";
    setTimeout(() => load(), 0);
  });
  await load();
}

function requestTable(rows, admin) {
  const columns = [
    {label: "Time", value: (r) => fmtTime(r.created_at), class: "nowrap"},
    {label: "Request", value: (r) => h("a", {href: route("requests", r.id)}, r.id), class: "mono"},
    admin ? {label: "Tenant", value: (r) => r.tenant} : null,
    {label: "Model", value: (r) => r.model},
    {label: "Endpoint", value: (r) => r.endpoint},
    {label: "Status", value: (r) => h("span", null, statusBadge(r.status), r.http_status ? ` ${r.http_status}` : "")},
    {label: "Latency", value: (r) => fmtMs(r.latency_ms), class: "num"},
    {label: "TTFT", value: (r) => fmtMs(r.ttft_ms), class: "num"},
    {label: "Tokens in/out", value: (r) => `${fmtNum(r.prompt_tokens)} / ${fmtNum(r.completion_tokens)}`, class: "num"},
    {label: "Cost", value: (r) => fmtUsd(r.cost_usd), class: "num"},
    {label: "Cache", value: (r) => r.cache},
    {label: "Feedback", value: (r) => feedbackMark(r.feedback)},
  ].filter(Boolean);
  return table(columns, rows, {testid: "requests-table", empty: "no requests match",
    rowProps: (r) => ({class: "clickable", "data-testid": "request-row", "data-id": r.id,
      onclick: (event) => { if (!event.target.closest("a")) location.hash = route("requests", r.id); }})});
}

function feedbackMark(rating) {
  if (rating === "up") return h("span", {class: "badge badge-ok"}, thumb("up"), " up");
  if (rating === "down") return h("span", {class: "badge badge-error"}, thumb("down"), " down");
  return null;
}

// -- one request ---------------------------------------------------------------------------------

export async function requestPage(view, ctx) {
  const id = ctx.params[0];
  clear(view, h("p", {class: "muted"}, "Loading…"));
  const result = await api(`/admin/requests/${encodeURIComponent(id)}`);
  if (!ctx.alive()) return;
  const back = h("a", {href: "#/requests"}, "← All requests");
  if (!result.ok) {
    clear(view, back, h("h1", null, "Request"),
      result.status === 404
        ? h("p", {class: "no-data", "data-testid": "request-not-found"}, `Request not found: ${id}`)
        : errorBox(`The request could not be loaded: ${result.error}`));
    return;
  }
  const r = result.data;
  const trace = r.trace || null;
  const feedbackHolder = h("div");
  clear(view, back,
    h("div", {class: "page-head"}, h("div", {class: "title-row"},
      h("h1", {class: "mono", "data-testid": "request-id"}, r.id), statusBadge(r.status))),
    h("div", {class: "detail-grid"},
      card("Request", facts([
        ["Time", fmtTime(r.created_at)], ["Tenant", r.tenant], ["Key", r.key_id], ["Endpoint", r.endpoint],
        ["Model", r.model], ["Deployment", r.deployment], ["Stream", r.stream === undefined ? null : String(r.stream)],
        ["Status", r.status], ["HTTP status", r.http_status], ["Error", r.error_type],
        ["Prompt tokens", fmtNum(r.prompt_tokens)], ["Completion tokens", fmtNum(r.completion_tokens)],
        ["Latency", fmtMs(r.latency_ms)], ["Time to first token", fmtMs(r.ttft_ms)],
        ["Time per output token", fmtMs(r.tpot_ms)], ["Finish reason", r.finish_reason], ["Route", r.route],
        ["Attempts", r.attempts], ["Cache", r.cache], ["Cost", fmtUsd(trace && trace.cost_usd !== undefined
          ? trace.cost_usd : r.cost_usd)], ["Guards", r.guard], ["Prompt version", r.prompt_version],
      ], "request-fields")),
      h("div", {class: "stack"},
        card("Trace", trace && trace.stages && trace.stages.length
          ? waterfall(trace.stages, r.latency_ms) : noData("no trace recorded for this request")),
        h("div", {class: "two-col"},
          card("Route decision", trace && trace.route ? routeFacts(trace.route) : noData()),
          card("Guards", trace && trace.guards && Object.keys(trace.guards).length
            ? table([{label: "Guard", value: (g) => g[0]}, {label: "Verdict", value: (g) => verdict(g[1])}],
              Object.entries(trace.guards), {testid: "guard-table"})
            : noData(r.guard ? r.guard : "no guard verdicts"))))),
    card("Retrieved chunks", retrieval(trace && trace.retrieval)),
    h("div", {class: "two-col"},
      card("Prompt as sent", prompt(trace ? trace.prompt : null)),
      card("Answer", trace && trace.answer !== undefined && trace.answer !== null
        ? h("pre", {class: "text-block", "data-testid": "request-answer"}, trace.answer) : noData())),
    card("Feedback", feedbackHolder));
  renderFeedback(feedbackHolder, r, ctx);
}

function verdict(value) {
  const text = typeof value === "string" ? value : pretty(value);
  const kind = /block|fail|stop/i.test(text) ? "error" : /flag|redact|warn/i.test(text) ? "warn" : "ok";
  return badge(text, kind);
}

/** One bar per stage, placed by start and length against the request's whole latency. */
export function waterfall(stages, latencyMs) {
  const end = Math.max(Number(latencyMs) || 0, ...stages.map((s) => (s.start_ms || 0) + (s.duration_ms || 0)), 0.001);
  const scale = h("div", {class: "wf-scale"}, [0, 0.25, 0.5, 0.75, 1].map((f) => {
    const tick = h("span", {class: "wf-tick"}, fmtMs(end * f));
    tick.style.left = `${f * 100}%`;
    return tick;
  }));
  const rows = stages.map((s) => {
    const bar = h("div", {class: `wf-bar wf-${String(s.name).replace(/[^a-z_]/gi, "")}`, "data-testid": "waterfall-bar",
      "data-stage": s.name, title: `${s.name}: from ${fmtMs(s.start_ms)}, ${fmtMs(s.duration_ms)}`});
    bar.style.left = `${Math.min(((s.start_ms || 0) / end) * 100, 99.5)}%`;
    bar.style.width = `${Math.max(((s.duration_ms || 0) / end) * 100, 0.4)}%`;
    return h("div", {class: "wf-row"}, h("div", {class: "wf-name"}, s.name), h("div", {class: "wf-track"}, bar),
      h("div", {class: "wf-ms num"}, fmtMs(s.duration_ms)));
  });
  const withAttributes = stages.filter((s) => s.attributes && Object.keys(s.attributes).length);
  return h("div", {class: "waterfall", "data-testid": "waterfall"},
    h("div", {class: "wf-row wf-head"}, h("div", {class: "wf-name muted"}, "stage"), scale, h("div", {class: "wf-ms muted"}, "duration")),
    rows,
    withAttributes.length ? h("details", {class: "wf-attrs"}, h("summary", null, "Stage attributes"),
      table([{label: "Stage", value: (s) => s.name, class: "mono"}, {label: "Start", value: (s) => fmtMs(s.start_ms), class: "num"},
        {label: "Attributes", value: (s) => Object.entries(s.attributes).map(([k, v]) =>
          `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join("  "), class: "mono"}], withAttributes))
      : null);
}

function routeFacts(r) {
  return facts([["Model", r.model], ["Deployment", r.deployment],
    ["Reasons", (r.reasons || []).join(", ")], ["Attempts", (r.attempts || []).join(" → ")]], "route-decision");
}

function retrieval(info) {
  if (!info) return noData("no retrieval for this request");
  const chunks = info.chunks || [];
  return h("div", {"data-testid": "retrieval"},
    info.query ? h("p", null, h("b", null, "Query: "), info.query) : null,
    chunks.length ? h("ol", {class: "chunks"}, chunks.map((c) => h("li", {class: "chunk", "data-testid": "retrieved-chunk"},
      h("div", {class: "chunk-head"}, h("b", null, `[${c.index ?? "?"}] `), c.title || c.file_id || "",
        h("span", {class: "muted"}, ` ${c.file_id || ""}${c.chunk_id !== undefined ? ` #${c.chunk_id}` : ""}`),
        c.score !== undefined && c.score !== null ? badge(`score ${Number(c.score).toFixed(3)}`) : null),
      h("pre", {class: "text-block small"}, c.text || "")))) : noData("no chunks retrieved"));
}

function prompt(value) {
  if (value === null || value === undefined) return noData();
  if (typeof value === "string") return h("pre", {class: "text-block", "data-testid": "request-prompt"}, value);
  return h("div", {"data-testid": "request-prompt"}, (Array.isArray(value) ? value : [value]).map((m) =>
    h("div", {class: "message"}, h("div", {class: "role"}, m.role || ""),
      h("pre", {class: "text-block"}, typeof m.content === "string" ? m.content : pretty(m.content)))));
}

// -- feedback --------------------------------------------------------------------------------------

function renderFeedback(holder, r, ctx) {
  const list = r.feedback || [];
  let rating = null;
  const up = h("button", {type: "button", class: "thumb", "aria-pressed": "false", "data-testid": "feedback-up",
    "aria-label": "Thumbs up"}, thumb("up"), " Good");
  const down = h("button", {type: "button", class: "thumb", "aria-pressed": "false", "data-testid": "feedback-down",
    "aria-label": "Thumbs down"}, thumb("down"), " Bad");
  const pick = (value) => {
    rating = value;
    up.setAttribute("aria-pressed", String(value === "up"));
    down.setAttribute("aria-pressed", String(value === "down"));
  };
  up.addEventListener("click", () => pick("up"));
  down.addEventListener("click", () => pick("down"));
  const comment = h("textarea", {id: "feedback-comment", rows: "2", maxlength: "2000", "data-testid": "feedback-comment"});
  const message = h("div", {role: "status", "data-testid": "feedback-status"});
  const form = h("form", {class: "feedback-form"},
    h("div", {class: "thumbs", role: "group", "aria-label": "Rating"}, up, down),
    field("Comment (optional)", comment),
    h("button", {type: "submit", class: "primary", "data-testid": "feedback-submit"}, "Send feedback"), message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!rating) { clear(message, errorBox("Pick thumbs up or down first.")); return; }
    const result = await sendFeedback(r.id, rating, comment.value.trim() || null);
    if (!ctx.alive()) return;
    if (result.ok) {
      list.push(result.data);
      drawList();
      comment.value = "";
      pick(null);
      clear(message, h("span", {class: "ok-text"}, "Thanks, feedback recorded."));
    } else {
      clear(message, errorBox(result.status === 404 ? "Feedback is not available for this request."
        : `Feedback failed: ${result.error}`));
    }
  });
  const listHolder = h("div", {"data-testid": "feedback-list"});
  const drawList = () => clear(listHolder, list.length
    ? table([{label: "Time", value: (f) => fmtTime(f.created_at)}, {label: "Rating", value: (f) => feedbackMark(f.rating)},
      {label: "Comment", value: (f) => f.comment}], list)
    : noData("no feedback yet"));
  drawList();
  clear(holder, listHolder, form);
}

export function sendFeedback(requestId, rating, comment) {
  return api("/v1/feedback", {method: "POST", body: {request_id: requestId, rating, ...(comment ? {comment} : {})}});
}
