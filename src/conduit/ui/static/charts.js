// Time-series line charts drawn as inline SVG: y axis with nice ticks, time labels on the x axis,
// several series with a legend, gaps where a value is missing, and a hover tooltip.

import {h, svg, clear} from "./dom.js";

export const PALETTE = ["#2457c5", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5c677d"];

const MARGIN = {left: 52, right: 14, top: 10, bottom: 24};
const TIME_STEPS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 4) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const ticks = [];
  // Whole multiples of the step, the last one at or above `hi` (no creeping float sums).
  for (let i = Math.floor(lo / step); i <= Math.ceil(hi / step - 1e-9); i += 1) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}

function timeTicks(t0, t1, approx = 6) {
  const span = (t1 - t0) / 1000;
  const stepS = TIME_STEPS_S.find((s) => span / s <= approx) || 86400;
  const step = stepS * 1000;
  const ticks = [];
  // Align to the local clock (minutes and hours land on round numbers).
  const offset = new Date(t0).getTimezoneOffset() * 60000;
  for (let t = Math.ceil((t0 - offset) / step) * step + offset; t <= t1; t += step) ticks.push(t);
  return {ticks, stepS};
}

function timeLabel(t, stepS) {
  const d = new Date(t);
  const p = (n) => String(n).padStart(2, "0");
  if (stepS < 60) return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  if (stepS >= 86400) return `${d.getMonth() + 1}/${d.getDate()}`;
  return `${p(d.getHours())}:${p(d.getMinutes())}`;
}

export function shortNumber(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  if (a === 0) return "0";
  if (a < 0.01) return String(Number(v.toPrecision(2)));
  return `${+v.toFixed(a < 1 ? 3 : a < 10 ? 2 : 1)}`;
}

/**
 * Draw a chart into `container` (replacing what was there).
 *   series: [{name, points: [[t_ms, value|null], ...]}]
 *   xDomain: [t0_ms, t1_ms]; format: value -> text (tooltip and legend); yMax: a fixed top (e.g. 100 for %).
 */
export function lineChart(container, {series, xDomain, format = shortNumber, yMax = null, height = 170, testid,
  legendValue = null}) {
  const width = Math.max(container.clientWidth || 0, 280);
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom;
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v !== null && v !== undefined));
  const [t0, t1] = xDomain;
  const hasData = values.length > 0;
  const top = yMax ?? Math.max(...values, 0);
  const yTicks = niceTicks(Math.min(0, ...values), top > 0 ? top : 1);
  const yLo = yTicks[0];
  const yHi = yTicks[yTicks.length - 1];
  const x = (t) => MARGIN.left + ((t - t0) / Math.max(t1 - t0, 1)) * plotW;
  const y = (v) => MARGIN.top + plotH - ((v - yLo) / Math.max(yHi - yLo, 1e-12)) * plotH;

  const root = svg("svg", {class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": series.map((s) => s.name).join(", ")});
  const axes = svg("g", {class: "axes"});
  for (const v of yTicks) {
    axes.append(svg("line", {class: "grid-line", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(v), y2: y(v)}),
      svg("text", {class: "tick", x: MARGIN.left - 6, y: y(v) + 3, "text-anchor": "end"}, shortNumber(v)));
  }
  const {ticks, stepS} = timeTicks(t0, t1);
  for (const t of ticks) {
    axes.append(svg("line", {class: "tick-mark", x1: x(t), x2: x(t), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4}),
      svg("text", {class: "tick", x: x(t), y: height - 6, "text-anchor": "middle"}, timeLabel(t, stepS)));
  }
  axes.append(svg("line", {class: "axis", x1: MARGIN.left, x2: width - MARGIN.right, y1: MARGIN.top + plotH,
    y2: MARGIN.top + plotH}));
  root.append(axes);

  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    const pts = s.points.filter((p) => p[0] >= t0 && p[0] <= t1);
    let d = "";
    let pen = false;
    let drawn = 0;
    const lone = [];
    pts.forEach((p, j) => {
      if (p[1] === null || p[1] === undefined) { pen = false; return; }
      const prevMissing = j === 0 || pts[j - 1][1] === null || pts[j - 1][1] === undefined;
      const nextMissing = j === pts.length - 1 || pts[j + 1][1] === null || pts[j + 1][1] === undefined;
      if (prevMissing && nextMissing) lone.push(p);
      d += `${pen ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`;
      pen = true;
      drawn += 1;
    });
    if (d) {
      root.append(svg("path", {class: "series-line", d, stroke: color, "data-series": s.name, "data-points": drawn}));
    }
    for (const p of lone) root.append(svg("circle", {class: "series-dot", cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: color}));
  });

  const box = h("div", {class: "chart-box", "data-testid": testid});
  box.append(root);
  if (!hasData) box.append(h("div", {class: "chart-empty", "data-testid": "chart-empty"}, "no data"));
  box.append(legend(series, format, legendValue));
  if (hasData) hover(box, root, series, {x, y, t0, t1, plotH, format, stepS});
  clear(container, box);
  return box;
}

/** Names with colours, and per series its latest value ("last") or its total over the window ("sum"). */
function legend(series, format, legendValue) {
  return h("ul", {class: "legend"}, series.map((s, i) => {
    const known = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    let value = null;
    if (legendValue === "last" && known.length) value = `now ${format(known[known.length - 1][1])}`;
    if (legendValue === "sum" && known.length) value = `total ${format(known.reduce((acc, p) => acc + p[1], 0))}`;
    const swatch = h("span", {class: "swatch"});
    swatch.style.background = s.color || PALETTE[i % PALETTE.length];
    return h("li", null, swatch, s.name, value ? h("span", {class: "muted"}, ` ${value}`) : null);
  }));
}

function hover(box, root, series, {x, t0, t1, plotH, format, stepS}) {
  const times = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))]
    .filter((t) => t >= t0 && t <= t1).sort((a, b) => a - b);
  if (!times.length) return;
  const cursor = svg("line", {class: "cursor", y1: MARGIN.top, y2: MARGIN.top + plotH, visibility: "hidden"});
  const overlay = svg("rect", {class: "overlay", x: MARGIN.left, y: MARGIN.top,
    width: Math.max(x(t1) - MARGIN.left, 1), height: plotH});
  const tip = h("div", {class: "chart-tip", role: "status"});
  tip.hidden = true;
  root.append(cursor, overlay);
  box.append(tip);
  overlay.addEventListener("mousemove", (event) => {
    const bounds = root.getBoundingClientRect();
    const px = event.clientX - bounds.left;
    let nearest = times[0];
    for (const t of times) if (Math.abs(x(t) - px) < Math.abs(x(nearest) - px)) nearest = t;
    cursor.setAttribute("x1", x(nearest));
    cursor.setAttribute("x2", x(nearest));
    cursor.setAttribute("visibility", "visible");
    const rows = series.map((s, i) => {
      const point = s.points.reduce((best, p) => (Math.abs(p[0] - nearest) < Math.abs(best[0] - nearest) ? p : best),
        s.points[0] || [nearest, null]);
      const swatch = h("span", {class: "swatch"});
      swatch.style.background = s.color || PALETTE[i % PALETTE.length];
      return h("div", null, swatch, `${s.name}: `, h("b", null, point[1] === null || point[1] === undefined ? "—" : format(point[1])));
    });
    clear(tip, h("div", {class: "muted"}, timeLabel(nearest, Math.min(stepS, 59))), rows);
    tip.hidden = false;
    const left = Math.min(x(nearest) + 10, bounds.width - 180);
    tip.style.left = `${Math.max(left, 0)}px`;
    tip.style.top = `${MARGIN.top}px`;
  });
  overlay.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    tip.hidden = true;
  });
}

/** Bucketed rows -> one series: [[t_ms, pick(row)]]. */
export function seriesOf(rows, name, pick) {
  return {name, points: rows.map((r) => [r.t * 1000, nullable(pick(r))])};
}

function nullable(v) {
  return v === null || v === undefined || Number.isNaN(v) ? null : Number(v);
}

/** Rows of {t, <key>, <value>} -> one series per key, aligned on `times` (missing buckets: `fill`). */
export function seriesByKey(rows, key, value, times, {fill = 0, label = (k) => k} = {}) {
  const groups = new Map();
  for (const r of rows) {
    const k = r[key] ?? "(none)";
    if (!groups.has(k)) groups.set(k, new Map());
    groups.get(k).set(r.t, nullable(r[value]));
  }
  return [...groups.entries()].sort((a, b) => String(a[0]).localeCompare(String(b[0]))).map(([k, byT]) => ({
    name: label(k),
    points: (times || [...byT.keys()].sort((a, b) => a - b)).map((t) => [t * 1000, byT.has(t) ? byT.get(t) : fill]),
  }));
}
