// A small SVG line chart: enough for a loss curve and recall per epoch, no library needed.
const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed"];

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

const tick = (v) => (Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3));

/** series: [{name, points: [[x, y], ...], dashed}]; returns a <figure> with the chart and its caption. */
export function lineChart({ title, series, xLabel, yMin, yMax, width = 480, height = 220 }) {
  const pad = { left: 48, right: 12, top: 12, bottom: 34 };
  const all = series.flatMap((s) => s.points);
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  if (!all.length) {
    figure.append(caption, Object.assign(document.createElement("p"), { className: "muted", textContent: "No data yet." }));
    return figure;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [yMin ?? Math.min(...ys), yMax ?? Math.max(...ys)];
  if (x0 === x1) x1 = x0 + 1;
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);

  const last = series.map((s) => s.points.length ? `${s.name} ${tick(s.points.at(-1)[1])}` : s.name).join(", ");
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}: ${last}` });
  root.append(svg("rect", { x: pad.left, y: pad.top, width: width - pad.left - pad.right,
    height: height - pad.top - pad.bottom, class: "plot" }));
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: sy(y), y2: sy(y), class: "grid" }));
    root.append(svg("text", { x: pad.left - 4, y: sy(y) + 4, "text-anchor": "end" }, tick(y)));
  }
  for (const x of [x0, x1]) root.append(svg("text", { x: sx(x), y: height - pad.bottom + 14, "text-anchor": "middle" }, tick(x)));
  root.append(svg("text", { x: (pad.left + width - pad.right) / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    root.append(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 2,
      "stroke-dasharray": s.dashed ? "5 4" : "none" }));
    if (s.points.length < 40) {
      for (const p of s.points) root.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: colour }));
    }
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("span");
    item.style.setProperty("--colour", COLOURS[i % COLOURS.length]);
    item.className = s.dashed ? "dashed" : "";
    item.textContent = s.name;
    legend.append(item);
  });
  figure.append(caption, root, legend);
  return figure;
}
