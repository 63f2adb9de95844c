// Overview: totals and time-series charts from GET /admin/stats, refreshed every 5 seconds.

import {h, clear, field, select, fmtNum, fmtUsd, fmtPct, fmtMs, errorBox} from "./dom.js";
import {api} from "./api.js";
import {lineChart, seriesOf, seriesByKey, shortNumber} from "./charts.js";

const WINDOWS = [
  {value: "900", label: "Last 15 minutes", bucket: 15},
  {value: "3600", label: "Last hour", bucket: 60},
  {value: "86400", label: "Last 24 hours", bucket: 900},
];
const REFRESH_MS = 5000;

// Kept while the tab lives, so that coming back keeps the chosen window.
const state = {window: "900", auto: true};

const ms = (v) => fmtMs(v);
const perS = (v) => `${shortNumber(v)}/s`;
const pct = (v) => `${shortNumber(v)}%`;

/** The charts: title, who may see it, and the series it draws from a stats answer. */
const CHARTS = [
  {id: "requests", title: "Requests and errors per second", format: perS, series: (s) => [
    seriesOf(s.series, "requests/s", (r) => r.rps),
    seriesOf(s.series, "errors/s", (r) => (r.errors ?? 0) / (s.bucket_s || 1))]},
  {id: "latency", title: "Latency", format: ms, series: (s) => [
    seriesOf(s.series, "p50", (r) => r.latency_p50_ms),
    seriesOf(s.series, "p95", (r) => r.latency_p95_ms),
    seriesOf(s.series, "p99", (r) => r.latency_p99_ms)]},
  {id: "ttft", title: "Time to first token", format: ms, series: (s) => [
    seriesOf(s.series, "p50", (r) => r.ttft_p50_ms),
    seriesOf(s.series, "p95", (r) => r.ttft_p95_ms)]},
  {id: "tpot", title: "Time per output token", format: ms, series: (s) => [
    seriesOf(s.series, "p50", (r) => r.tpot_p50_ms),
    seriesOf(s.series, "p95", (r) => r.tpot_p95_ms)]},
  {id: "tokens", title: "Output tokens per second", format: perS, series: (s) => [
    seriesOf(s.series, "tokens/s", (r) => r.tokens_per_s)]},
  {id: "cost", title: "Cost per tenant", format: fmtUsd, legend: "sum", series: (s) =>
    seriesByKey(s.cost_by_tenant || [], "tenant", "cost_usd", s.series.map((r) => r.t),
      {label: (k) => (k === "(none)" ? "(admin key)" : k)})},
  {id: "cache", title: "Cache hit rate", format: pct, yMax: 100, series: (s) => [
    seriesOf(s.series, "hit rate", (r) => (r.cache_hit_rate === null || r.cache_hit_rate === undefined
      ? null : r.cache_hit_rate * 100))]},
  {id: "guards", title: "Guard blocks", format: (v) => fmtNum(v), legend: "sum", series: (s) => [
    seriesOf(s.series, "blocks", (r) => r.guard_blocks)]},
  {id: "kv", title: "KV-cache usage (engine)", format: pct, yMax: 100, admin: true, legend: "last", series: (s) =>
    seriesByKey((s.engine || []).map((e) => ({...e, kv: e.kv_cache_usage === null || e.kv_cache_usage === undefined
      ? null : e.kv_cache_usage * 100})), "model", "kv", null, {fill: null})},
  {id: "engine-queue", title: "Engine sequences (running / waiting)", format: (v) => fmtNum(v), admin: true, legend: "last",
    series: (s) => [
      ...seriesByKey(s.engine || [], "model", "running", null, {fill: null, label: (k) => `${k} running`}),
      ...seriesByKey(s.engine || [], "model", "waiting", null, {fill: null, label: (k) => `${k} waiting`})]},
];

const TILES = [
  {id: "requests", label: "Requests", value: (t) => fmtNum(t.requests)},
  {id: "errors", label: "Errors", value: (t) => fmtNum(t.errors),
    note: (t) => (t.requests ? `${fmtPct(t.errors / t.requests, 1)} of requests` : null)},
  {id: "cost", label: "Cost", value: (t) => fmtUsd(t.cost_usd)},
  {id: "tokens", label: "Output tokens", value: (t) => fmtNum(t.output_tokens)},
  {id: "cache", label: "Cache hits", value: (t) => fmtNum(t.cache_hits),
    note: (t) => (t.requests ? `${fmtPct(t.cache_hits / t.requests, 1)} of requests` : null)},
  {id: "guards", label: "Guard blocks", value: (t) => fmtNum(t.guard_blocks)},
];

export async function overviewPage(view, ctx) {
  const windowSelect = select("window", WINDOWS.map((w) => [w.value, w.label]), state.window,
    {"data-testid": "window-select"});
  const auto = h("input", {id: "auto-refresh", type: "checkbox", checked: state.auto, "data-testid": "auto-refresh"});
  const stamp = h("span", {class: "muted", "data-testid": "updated-at"});
  const status = h("div");
  const tiles = h("div", {class: "tiles", "data-testid": "overview-tiles"});
  const charts = CHARTS.filter((c) => !c.admin || ctx.who.admin);
  const holders = new Map(charts.map((c) => [c.id, h("div", {class: "chart-holder"})]));
  clear(view,
    h("div", {class: "page-head"},
      h("h1", null, "Overview"),
      h("div", {class: "toolbar"},
        field("Window", windowSelect, "inline"),
        h("div", {class: "field inline"}, auto, h("label", {for: "auto-refresh"}, "Refresh every 5 s")),
        stamp)),
    status, tiles,
    h("div", {class: "chart-grid"}, charts.map((c) =>
      h("section", {class: "card chart-card", "data-testid": `chart-${c.id}`}, h("h2", null, c.title), holders.get(c.id)))));

  let timer = null;
  let busy = false;
  const load = async () => {
    if (busy || !ctx.alive()) return;
    busy = true;
    try {
      const w = WINDOWS.find((x) => x.value === state.window) || WINDOWS[0];
      const result = await api(`/admin/stats?window_s=${w.value}&bucket_s=${w.bucket}`);
      if (!ctx.alive()) return;
      const stats = result.ok && result.data && Array.isArray(result.data.series) ? result.data : null;
      clear(status, stats ? null : result.status === 404
        ? h("p", {class: "muted"}, "This server has no statistics endpoint (/admin/stats): no data to chart.")
        : errorBox(`Statistics failed: ${result.error}`));
      drawTiles(tiles, stats ? stats.totals || {} : null);
      const now = stats && stats.now ? stats.now * 1000 : Date.now();
      const span = Number(stats ? stats.window_s : w.value) * 1000;
      for (const c of charts) {
        const series = stats ? c.series(stats) : [];
        lineChart(holders.get(c.id), {series, xDomain: [now - span, now], format: c.format, yMax: c.yMax,
          legendValue: c.legend, testid: `chart-${c.id}-svg`});
      }
      stamp.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } finally {
      busy = false;
    }
  };
  const schedule = () => {
    clearInterval(timer);
    timer = state.auto ? setInterval(() => load().catch(() => {}), REFRESH_MS) : null;
  };
  windowSelect.addEventListener("change", () => { state.window = windowSelect.value; load(); });
  auto.addEventListener("change", () => { state.auto = auto.checked; schedule(); });
  await load();
  schedule();
  return () => clearInterval(timer);
}

function drawTiles(tiles, totals) {
  clear(tiles, TILES.map((t) => {
    const note = totals && t.note ? t.note(totals) : null;
    return h("div", {class: "tile", "data-testid": `tile-${t.id}`},
      h("div", {class: "tile-label"}, t.label),
      h("div", {class: ["tile-value", totals ? null : "muted"], "data-testid": `tile-${t.id}-value`},
        totals ? t.value(totals) : "no data"),
      note ? h("div", {class: "tile-note muted"}, note) : null);
  }));
}
