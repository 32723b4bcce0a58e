// Line charts as inline SVG, drawn here (no library): one polyline per series over the
// time buckets, a y axis from 0 to the largest value, the first and last bucket times.
const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#2b6cb0", "#d69e2e", "#c53030", "#2f855a", "#805ad5"];

function el(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// series: {name: [numbers]}; labels: bucket start times (ISO). Returns an <svg>.
export function lineChart(title, series, labels) {
  const width = 400, height = 160, left = 36, right = 8, top = 18, bottom = 20;
  const names = Object.keys(series);
  const count = labels.length;
  const max = Math.max(1, ...names.flatMap((n) => series[n]));
  const x = (i) => left + (count <= 1 ? 0 : (i * (width - left - right)) / (count - 1));
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": title });
  svg.append(el("text", { x: left, y: 12 }, title));
  svg.append(el("line", { x1: left, y1: y(0), x2: width - right, y2: y(0), stroke: "#cbd5e0" }));
  svg.append(el("line", { x1: left, y1: top, x2: left, y2: y(0), stroke: "#cbd5e0" }));
  svg.append(el("text", { x: 2, y: top + 8 }, String(max)));
  svg.append(el("text", { x: 2, y: y(0) }, "0"));
  if (count) {
    const time = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit",
      minute: "2-digit" });
    svg.append(el("text", { x: left, y: height - 4 }, time(labels[0])));
    svg.append(el("text", { x: width - right, y: height - 4, "text-anchor": "end" },
      time(labels[count - 1])));
  }
  names.forEach((name, n) => {
    const points = series[name].map((v, i) => `${x(i)},${y(v)}`).join(" ");
    const colour = COLOURS[n % COLOURS.length];
    svg.append(el("polyline", { points, fill: "none", stroke: colour, "stroke-width": 1.5,
      "data-series": name }));
    svg.append(el("text", { x: width - right - 70 * (names.length - n), y: 12, fill: colour },
      `${name} ${series[name].reduce((a, b) => a + b, 0)}`));
  });
  return svg;
}
