// Small SVG charts drawn by hand: a time-series line chart, a histogram and horizontal stacked bars.
// Each call redraws its <svg> from scratch; the data comes from /api/v1/metrics/*.

const NS = "http://www.w3.org/2000/svg";
const H = 220, PAD = { l: 44, r: 10, t: 10, b: 26 };
let W = 600; // set per chart from the <svg>'s width, so text is never stretched

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function reset(svg) {
  svg.replaceChildren();
  W = Math.max(300, Math.round(svg.getBoundingClientRect().width) || 600);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
}

function niceMax(value) {
  if (value <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= value) return m * p;
  return 10 * p;
}

function compact(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(n >= 1e4 ? 0 : 1) + "k";
  return String(Math.round(n * 100) / 100);
}

function yAxis(svg, max) {
  for (let i = 0; i <= 4; i++) {
    const y = PAD.t + (H - PAD.t - PAD.b) * (1 - i / 4);
    svg.append(el("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, stroke: "#e3e7ee" }));
    svg.append(el("text", { x: PAD.l - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#687385" }, compact(max * i / 4)));
  }
}

function empty(svg, message) {
  svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "font-size": 13, fill: "#687385" }, message));
}

export function legend(node, items) {
  node.replaceChildren(...items.map(([label, colour]) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colour;
    span.append(swatch, label);
    return span;
  }));
}

/** series: [{label, colour, points: [[Date, value], ...]}] over [start, end]. */
export function lineChart(svg, series, start, end) {
  reset(svg);
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  if (!values.some((v) => v > 0)) { yAxis(svg, 1); empty(svg, "nothing in this window"); return; }
  const max = niceMax(Math.max(...values));
  yAxis(svg, max);
  const t0 = start.getTime(), span = Math.max(1, end.getTime() - t0);
  const x = (t) => PAD.l + (W - PAD.l - PAD.r) * ((t.getTime() - t0) / span);
  const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - v / max);
  for (let i = 0; i <= 4; i++) {
    const t = new Date(t0 + span * i / 4);
    svg.append(el("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle", "font-size": 11, fill: "#687385" },
      t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    svg.append(el("path", { d, fill: "none", stroke: s.colour, "stroke-width": 2, "stroke-linejoin": "round" }));
    if (s.points.length === 1) svg.append(el("circle", { cx: x(s.points[0][0]), cy: y(s.points[0][1]), r: 3, fill: s.colour }));
  }
}

/** buckets: [{label, count}] drawn as columns. */
export function histogram(svg, buckets, colour, marks = []) {
  reset(svg);
  const max = niceMax(Math.max(0, ...buckets.map((b) => b.count)));
  yAxis(svg, max);
  if (!buckets.some((b) => b.count > 0)) { empty(svg, "no finished jobs in this window"); return; }
  const slot = (W - PAD.l - PAD.r) / buckets.length;
  buckets.forEach((b, i) => {
    const h = (H - PAD.t - PAD.b) * (b.count / max);
    const rect = el("rect", { x: PAD.l + i * slot + 2, y: H - PAD.b - h, width: slot - 4, height: h, fill: colour, rx: 2 });
    rect.append(el("title", {}, `${b.label}: ${b.count}`));
    svg.append(rect);
    if (i % 2 === 0) svg.append(el("text", { x: PAD.l + i * slot + slot / 2, y: H - 8, "text-anchor": "middle", "font-size": 10, fill: "#687385" }, b.label));
  });
  marks.forEach(([label, index, c], n) => {
    if (index < 0) return;
    const xm = PAD.l + index * slot + slot / 2 + (n - 1) * 3;
    svg.append(el("line", { x1: xm, x2: xm, y1: PAD.t, y2: H - PAD.b, stroke: c, "stroke-dasharray": "4 3" }));
    svg.append(el("text", { x: xm + 3, y: PAD.t + 10 + n * 13, "font-size": 11, fill: c }, label));
  });
}

/** rows: [{label, parts: [value, ...]}], colours per part: horizontal stacked bars. */
export function stackedBars(svg, rows, colours) {
  reset(svg);
  if (!rows.length || !rows.some((r) => r.parts.some((v) => v > 0))) { empty(svg, "nothing in this window"); return; }
  const shown = rows.slice(0, 8);
  const max = niceMax(Math.max(...shown.map((r) => r.parts.reduce((a, b) => a + b, 0))));
  const left = 110, band = (H - PAD.t - PAD.b) / shown.length;
  shown.forEach((r, i) => {
    let x = left;
    const y = PAD.t + i * band + band * 0.15;
    svg.append(el("text", { x: left - 8, y: y + band * 0.45, "text-anchor": "end", "font-size": 12, fill: "#1b2430" }, r.label.slice(0, 16)));
    r.parts.forEach((v, j) => {
      const w = (W - left - PAD.r) * (v / max);
      if (w <= 0) return;
      const rect = el("rect", { x, y, width: w, height: band * 0.7, fill: colours[j] });
      rect.append(el("title", {}, `${r.label}: ${v}`));
      svg.append(rect);
      x += w;
    });
    svg.append(el("text", { x: x + 4, y: y + band * 0.45, "font-size": 11, fill: "#687385" }, r.parts.map(compact).join(" / ")));
  });
}
