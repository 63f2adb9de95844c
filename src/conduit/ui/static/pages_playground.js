// Playground: streamed chat over POST /v1/chat/completions (fetch + an SSE reader), optional
// retrieval over vector stores, [n] markers linked to the cited chunks, the request id and feedback.

import {h, clear, field, select, noData, errorBox, route, badge, thumb} from "./dom.js";
import {api, authHeaders, errorMessage, listOf, refused} from "./api.js";
import {sendFeedback} from "./pages_requests.js";

// The conversation survives a visit to another page (not a reload).
const state = {messages: [], model: "", stores: [], system: "", temperature: "0.7", maxTokens: "256"};

/** The `data:` payloads of a server-sent event stream, one per event, as they arrive. */
export async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const take = function* (final) {
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1 || (final && buffer.trim())) {
      const block = end === -1 ? buffer : buffer.slice(0, end);
      buffer = end === -1 ? "" : buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  };
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      yield* take(false);
    }
    buffer += decoder.decode();
    yield* take(true);
  } finally {
    reader.releaseLock();
  }
}

/** The request id: the x-request-id header, else derived from the chunk id (chatcmpl-X -> req-X). */
export function requestIdOf(header, chunkId) {
  if (header) return header;
  if (chunkId && chunkId.startsWith("chatcmpl-")) return `req-${chunkId.slice("chatcmpl-".length)}`;
  return chunkId || null;
}

/** Answer text with [n] markers turned into buttons for the citations that exist. */
export function withCitations(text, citations, onCite) {
  const known = new Set((citations || []).map((c) => Number(c.index)));
  const parts = [];
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    const n = Number(m[1]);
    if (!known.has(n)) continue;
    parts.push(text.slice(last, m.index));
    parts.push(h("button", {type: "button", class: "cite", "data-testid": "citation-link", "data-index": n,
      "aria-label": `Show source ${n}`, onclick: () => onCite(n)}, `[${n}]`));
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  return parts;
}

export async function playgroundPage(view, ctx) {
  const [models, stores] = await Promise.all([api("/v1/models"), api("/v1/vector_stores?limit=100")]);
  if (!ctx.alive()) return;
  const modelIds = (listOf(models) || []).map((m) => m.id);
  if (!modelIds.includes(state.model)) state.model = modelIds[0] || "";
  const storeList = listOf(stores) || [];

  const model = select("pg-model", modelIds.length ? modelIds : [["", "no models"]], state.model,
    {"data-testid": "playground-model"});
  const storeBoxes = storeList.map((s) => {
    const box = h("input", {type: "checkbox", id: `pg-store-${s.id}`, value: s.id, checked: state.stores.includes(s.id),
      "data-testid": "playground-store"});
    return h("div", {class: "check"}, box, h("label", {for: box.id}, s.name || s.id, h("span", {class: "muted mono"}, ` ${s.id}`)));
  });
  const system = h("textarea", {id: "pg-system", rows: "2", value: state.system, placeholder: "optional"});
  const temperature = h("input", {id: "pg-temperature", type: "number", min: "0", max: "2", step: "0.1", value: state.temperature});
  const maxTokens = h("input", {id: "pg-max-tokens", type: "number", min: "1", step: "1", value: state.maxTokens,
    "data-testid": "playground-max-tokens"});
  const input = h("textarea", {id: "pg-input", rows: "3", placeholder: "Ask something… (Ctrl+Enter sends)",
    "data-testid": "playground-input"});
  const send = h("button", {type: "submit", class: "primary", "data-testid": "playground-send"}, "Send");
  const stop = h("button", {type: "button", disabled: true, "data-testid": "playground-stop"}, "Stop");
  const reset = h("button", {type: "button", "data-testid": "playground-clear"}, "New chat");
  const transcript = h("div", {class: "transcript", "data-testid": "transcript", "aria-live": "polite"});
  const sources = h("div", {"data-testid": "citations-panel"}, noData("Sources cited by the answer show here."));
  const sourceDetail = h("div", {"data-testid": "citation-detail"});

  const form = h("form", {class: "composer"}, field("Message", input), h("div", {class: "actions"}, send, stop, reset));
  clear(view,
    h("div", {class: "page-head"}, h("h1", null, "Playground")),
    h("div", {class: "playground"},
      h("div", {class: "pg-main"},
        h("section", {class: "card settings"},
          h("div", {class: "filters"}, field("Model", model), field("Temperature", temperature), field("Max tokens", maxTokens)),
          field("System prompt", system),
          h("fieldset", {class: "stores"}, h("legend", null, "Retrieval over collections"),
            storeBoxes.length ? storeBoxes : h("span", {class: "muted"}, "no collections"))),
        transcript, form),
      h("aside", {class: "card pg-side"}, h("h2", null, "Sources"), sources, sourceDetail)));

  let controller = null;
  const showCitation = (citations, n) => {
    for (const item of sources.querySelectorAll("[data-index]")) item.classList.toggle("active", item.dataset.index === String(n));
    const c = citations.find((x) => Number(x.index) === n);
    if (!c) return;
    clear(sourceDetail, h("div", {class: "citation-full"},
      h("h3", null, `[${c.index}] ${c.title || c.file_id || ""}`),
      h("p", {class: "muted"}, [c.section, c.page !== null && c.page !== undefined ? `page ${c.page}` : null,
        c.score !== undefined && c.score !== null ? `score ${Number(c.score).toFixed(3)}` : null].filter(Boolean).join(" · ")),
      h("pre", {class: "text-block"}, c.text || "")));
    sourceDetail.scrollIntoView({block: "nearest"});
  };
  const showSources = (citations) => {
    clear(sourceDetail);
    clear(sources, citations.length ? h("ol", {class: "sources"}, citations.map((c) => h("li", {"data-testid": "citation-item",
      "data-index": String(c.index), onclick: () => showCitation(citations, Number(c.index))},
      h("b", null, `[${c.index}] `), c.title || c.file_id || "",
      c.score !== undefined && c.score !== null ? h("span", {class: "muted"}, ` ${Number(c.score).toFixed(3)}`) : null,
      h("div", {class: "snippet"}, (c.text || "").slice(0, 180))))) : noData("no sources cited"));
  };
  const redraw = () => {
    clear(transcript, state.messages.length ? state.messages.map((m) => bubble(m, showCitation)) :
      h("p", {class: "muted"}, "Pick a model, optionally collections to retrieve from, and ask."));
    const last = [...state.messages].reverse().find((m) => m.role === "assistant");
    showSources(last && last.citations ? last.citations : []);
  };

  const run = async (text) => {
    state.model = model.value;
    state.stores = storeBoxes.map((d) => d.querySelector("input")).filter((b) => b.checked).map((b) => b.value);
    state.system = system.value;
    state.temperature = temperature.value;
    state.maxTokens = maxTokens.value;
    const history = state.messages.filter((m) => m.role !== "error").map((m) => ({role: m.role, content: m.content}));
    const messages = [...(state.system.trim() ? [{role: "system", content: state.system}] : []), ...history,
      {role: "user", content: text}];
    state.messages.push({role: "user", content: text});
    const answer = {role: "assistant", content: "", citations: null, requestId: null, streaming: true};
    state.messages.push(answer);
    redraw();
    const body = {model: state.model, messages, stream: true};
    if (state.temperature !== "") body.temperature = Number(state.temperature);
    if (state.maxTokens !== "") body.max_tokens = Number(state.maxTokens);
    if (state.stores.length) body.retrieval = {vector_store_ids: state.stores};
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const live = transcript.lastChild.querySelector(".content");
    try {
      const res = await fetch("/v1/chat/completions", {method: "POST", signal: controller.signal,
        headers: {...authHeaders(), "Content-Type": "application/json", Accept: "text/event-stream"},
        body: JSON.stringify(body)});
      answer.requestId = res.headers.get("x-request-id");
      if (!res.ok) {
        const error = await res.json().catch(() => null);
        if (res.status === 401) throw refused(res.status, error);
        throw new Error(errorMessage(res.status, error));
      }
      for await (const data of sseData(res.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "The stream failed.");
        answer.requestId = requestIdOf(answer.requestId, chunk.id);
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) answer.content += choice.delta.content;
          if (choice.finish_reason) answer.finish = choice.finish_reason;
        }
        if (chunk.citations) answer.citations = chunk.citations;
        if (chunk.retrieval) answer.retrieval = chunk.retrieval;
        if (ctx.alive() && live) live.textContent = answer.content;
      }
    } catch (exc) {
      if (exc.name === "AbortError") answer.stopped = true;
      else if (exc.name !== "Unauthorized") answer.error = exc.message;
    } finally {
      answer.streaming = false;
      controller = null;
      if (ctx.alive()) {
        send.disabled = false;
        stop.disabled = true;
        redraw();
      }
    }
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    run(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  stop.addEventListener("click", () => controller && controller.abort());
  reset.addEventListener("click", () => { if (!controller) { state.messages = []; redraw(); } });
  redraw();
  return () => controller && controller.abort();
}

function bubble(m, showCitation) {
  if (m.role === "user") return h("div", {class: "bubble user"}, h("div", {class: "role"}, "you"), h("div", {class: "content"}, m.content));
  const content = h("div", {class: "content", "data-testid": m.streaming ? "streaming-answer" : "answer"},
    m.streaming ? m.content : withCitations(m.content, m.citations, (n) => showCitation(m.citations, n)));
  return h("div", {class: "bubble assistant"}, h("div", {class: "role"}, "assistant"), content,
    m.error ? h("div", {"data-testid": "playground-error"}, errorBox(m.error)) : null,
    m.stopped ? h("p", {class: "muted"}, "stopped") : null,
    !m.streaming ? meta(m) : null);
}

function meta(m) {
  const status = h("span", {role: "status", "data-testid": "playground-feedback-status"});
  const rate = (rating) => async () => {
    const r = await sendFeedback(m.requestId, rating, null);
    clear(status, r.ok ? h("span", {class: "ok-text"}, `Thanks: recorded ${rating === "up" ? "good" : "bad"}`)
      : h("span", {class: "error-text"}, r.status === 404 ? "feedback not available" : `feedback failed: ${r.error}`));
  };
  const retrieval = m.retrieval && m.retrieval.status ? badge(`retrieval: ${m.retrieval.status}`,
    m.retrieval.status === "grounded" ? "ok" : "warn") : null;
  return h("div", {class: "meta"},
    m.requestId ? h("a", {href: route("requests", m.requestId), class: "mono", "data-testid": "playground-request-id"}, m.requestId) : null,
    m.finish ? h("span", {class: "muted"}, `finish: ${m.finish}`) : null,
    retrieval,
    m.requestId ? h("span", {class: "thumbs"},
      h("button", {type: "button", class: "thumb", "aria-label": "Thumbs up", "data-testid": "thumb-up", onclick: rate("up")}, thumb("up")),
      h("button", {type: "button", class: "thumb", "aria-label": "Thumbs down", "data-testid": "thumb-down", onclick: rate("down")}, thumb("down")))
      : null,
    status);
}
