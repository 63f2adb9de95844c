// Collections (vector stores): the list, one store's files, a search playground, and its drift.

import {h, clear, field, table, facts, noData, errorBox, card, route, badge, fmtBytes, fmtTime, fmtNum} from "./dom.js";
import {api, listOf} from "./api.js";
import {lineChart} from "./charts.js";

export async function collectionsPage(view, ctx) {
  clear(view, h("div", {class: "page-head"}, h("h1", null, "Collections")), h("p", {class: "muted"}, "Loading…"));
  const result = await api("/v1/vector_stores?limit=100");
  if (!ctx.alive()) return;
  const stores = listOf(result);
  const body = stores === null
    ? (result.status === 404 ? noData() : errorBox(`Vector stores failed: ${result.error}`))
    : table([
      {label: "Name", value: (s) => h("a", {href: route("collections", s.id)}, s.name || "(unnamed)")},
      {label: "Id", value: (s) => s.id, class: "mono"},
      {label: "Status", value: (s) => badge(s.status || "", s.status === "completed" ? "ok" : "warn")},
      {label: "Files", value: (s) => fileCounts(s.file_counts), class: "num"},
      {label: "Usage", value: (s) => fmtBytes(s.usage_bytes), class: "num"},
      {label: "Created", value: (s) => fmtTime(s.created_at), class: "nowrap"},
    ], stores, {testid: "collections-table", empty: "no collections yet: create one with the API or `conduit ingest`",
      rowProps: (s) => ({class: "clickable", "data-testid": "collection-row", "data-id": s.id,
        onclick: (event) => { if (!event.target.closest("a")) location.hash = route("collections", s.id); }})});
  clear(view, h("div", {class: "page-head"}, h("h1", null, "Collections")), card(null, body));
}

function fileCounts(counts) {
  if (!counts) return null;
  const extra = [counts.in_progress ? `${counts.in_progress} in progress` : null,
    counts.failed ? `${counts.failed} failed` : null].filter(Boolean).join(", ");
  return `${fmtNum(counts.completed)} / ${fmtNum(counts.total)}${extra ? ` (${extra})` : ""}`;
}

export async function collectionPage(view, ctx) {
  const id = ctx.params[0];
  const back = h("a", {href: "#/collections"}, "← All collections");
  clear(view, back, h("p", {class: "muted"}, "Loading…"));
  const [store, files, names] = await Promise.all([
    api(`/v1/vector_stores/${encodeURIComponent(id)}`),
    api(`/v1/vector_stores/${encodeURIComponent(id)}/files?limit=100`),
    api("/v1/files"),
  ]);
  if (!ctx.alive()) return;
  if (!store.ok) {
    clear(view, back, h("h1", null, "Collection"), store.status === 404
      ? h("p", {class: "no-data", "data-testid": "collection-not-found"}, `Collection not found: ${id}`)
      : errorBox(`The collection could not be loaded: ${store.error}`));
    return;
  }
  const s = store.data;
  const filenames = new Map((listOf(names) || []).map((f) => [f.id, f.filename]));
  const fileRows = listOf(files);
  const drift = h("div");
  clear(view, back,
    h("div", {class: "page-head"}, h("h1", {"data-testid": "collection-name"}, s.name || s.id),
      h("span", {class: "mono muted"}, s.id)),
    h("div", {class: "two-col"},
      card("Collection", facts([["Status", s.status], ["Files", fileCounts(s.file_counts)],
        ["Usage", fmtBytes(s.usage_bytes)], ["Created", fmtTime(s.created_at)]])),
      card("Drift", drift)),
    card("Files", fileRows === null ? errorBox(`Files failed: ${files.error}`) : table([
      {label: "File", value: (f) => filenames.get(f.id) || f.id},
      {label: "Id", value: (f) => f.id, class: "mono"},
      {label: "Status", value: (f) => badge(f.status, f.status === "completed" ? "ok" : f.status === "failed" ? "error" : "warn")},
      {label: "Usage", value: (f) => fmtBytes(f.usage_bytes), class: "num"},
      {label: "Added", value: (f) => fmtTime(f.created_at), class: "nowrap"},
      {label: "Error", value: (f) => (f.last_error ? `${f.last_error.code}: ${f.last_error.message}` : null)},
    ], fileRows, {testid: "files-table", empty: "no files in this collection"})),
    card("Search", searchPlayground(id, filenames, ctx)));
  drawDrift(drift, id, ctx);
}

function searchPlayground(storeId, filenames, ctx) {
  const query = h("input", {id: "search-query", type: "search", required: true, placeholder: "a question or keywords",
    "data-testid": "search-query"});
  const count = h("input", {id: "search-count", type: "number", min: "1", max: "50", value: "5"});
  const results = h("div", {"data-testid": "search-results"});
  const form = h("form", {class: "filters"}, field("Query", query, "grow"), field("Results", count),
    h("div", {class: "field actions"}, h("button", {type: "submit", class: "primary", "data-testid": "search-submit"}, "Search")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(results, h("p", {class: "muted"}, "Searching…"));
    const r = await api(`/v1/vector_stores/${encodeURIComponent(storeId)}/search`, {method: "POST",
      body: {query: query.value, max_num_results: Number(count.value) || 5}});
    if (!ctx.alive()) return;
    const hits = listOf(r);
    if (hits === null) { clear(results, errorBox(`Search failed: ${r.error}`)); return; }
    clear(results, hits.length ? h("ol", {class: "chunks"}, hits.map((hit) => h("li", {class: "chunk", "data-testid": "search-result"},
      h("div", {class: "chunk-head"}, badge(`score ${Number(hit.score).toFixed(3)}`), " ",
        hit.filename || filenames.get(hit.file_id) || hit.file_id, h("span", {class: "muted mono"}, ` ${hit.file_id}`)),
      h("pre", {class: "text-block small"}, (hit.content || []).map((c) => c.text).join("\n"))))) : noData("no results"));
  });
  return h("div", null, form, results);
}

async function drawDrift(holder, storeId, ctx) {
  const r = await api("/admin/drift");
  if (!ctx.alive()) return;
  const rows = (listOf(r) || []).filter((d) => d.collection === storeId);
  if (!rows.length) { clear(holder, noData()); return; }
  const points = rows.flatMap((d) => d.points || []);
  const times = points.map((p) => p.t * 1000);
  const lo = Math.min(...times);
  const hi = Math.max(...times);
  const drifted = points.some((p) => p.drifted);
  clear(holder, h("p", null, drifted ? badge("drift detected", "error") : badge("no drift", "ok"),
    r.data.threshold !== undefined ? h("span", {class: "muted"}, ` threshold ${r.data.threshold}`) : null));
  const chart = h("div", {class: "chart-holder"});
  holder.append(chart);
  lineChart(chart, {xDomain: [lo - 60000, hi + 60000], testid: "drift-chart", series: rows.flatMap((d) => [
    {name: `${d.model} centroid distance`, points: (d.points || []).map((p) => [p.t * 1000, p.centroid_distance])},
    {name: `${d.model} mean top score`, points: (d.points || []).map((p) => [p.t * 1000, p.mean_top_score])},
  ])});
}
