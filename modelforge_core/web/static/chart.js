// A loss-by-step line chart drawn as plain SVG (no chart library).
const NS = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 240;
const MARGIN = { left: 56, right: 16, top: 16, bottom: 36 };

function node(tag, attrs = {}, text) {
  const item = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) item.setAttribute(key, String(value));
  if (text !== undefined) item.textContent = text;
  return item;
}

// About `count` round tick values covering [low, high].
function ticks(low, high, count = 5) {
  const span = high - low || 1;
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * magnitude).find((s) => span / s <= count) || magnitude * 10;
  const out = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

const label = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : String(Number(v.toPrecision(3))));

// series: [{ name, cls, points: [{ x, y }] }]
export function drawChart(svg, series, { empty = "no steps logged yet" } = {}) {
  svg.replaceChildren();
  const points = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  if (!points.length) {
    svg.append(node("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" }, empty));
    return;
  }
  let [x0, x1] = [Math.min(...points.map((p) => p.x)), Math.max(...points.map((p) => p.x))];
  let [y0, y1] = [Math.min(...points.map((p) => p.y)), Math.max(...points.map((p) => p.y))];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
  [y0, y1] = [y0 - pad, y1 + pad];
  const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * (WIDTH - MARGIN.left - MARGIN.right);
  const sy = (y) => HEIGHT - MARGIN.bottom - ((y - y0) / (y1 - y0)) * (HEIGHT - MARGIN.top - MARGIN.bottom);
  const axes = node("g", { class: "axes" });
  for (const y of ticks(y0, y1)) {
    axes.append(node("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(y), y2: sy(y), class: "grid" }));
    axes.append(node("text", { x: MARGIN.left - 6, y: sy(y) + 4, "text-anchor": "end" }, label(y)));
  }
  for (const x of ticks(x0, x1, 6).filter((v) => Number.isInteger(v))) {
    axes.append(node("line", { x1: sx(x), x2: sx(x), y1: HEIGHT - MARGIN.bottom, y2: HEIGHT - MARGIN.bottom + 4, class: "tick" }));
    axes.append(node("text", { x: sx(x), y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, String(x)));
  }
  axes.append(node("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: HEIGHT - MARGIN.bottom, y2: HEIGHT - MARGIN.bottom, class: "axis" }));
  axes.append(node("text", { x: WIDTH - MARGIN.right, y: HEIGHT - 4, "text-anchor": "end", class: "title" }, "step"));
  axes.append(node("text", { x: 12, y: MARGIN.top - 4, class: "title" }, "loss"));
  svg.append(axes);
  let legendX = WIDTH - MARGIN.right;
  for (const s of [...series].reverse()) {
    const pts = s.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
    if (!pts.length) continue;
    const group = node("g", { class: `series ${s.cls}` });
    if (pts.length > 1) group.append(node("polyline", { points: pts.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ") }));
    for (const p of pts.length <= 40 ? pts : [pts.at(-1)]) group.append(node("circle", { cx: sx(p.x), cy: sy(p.y), r: 2.5 }));
    svg.append(group);
    const text = node("text", { x: legendX, y: MARGIN.top + 2, "text-anchor": "end", class: `legend ${s.cls}` }, `● ${s.name}`);
    svg.append(text);
    legendX -= 14 + 8 * s.name.length;
  }
}
