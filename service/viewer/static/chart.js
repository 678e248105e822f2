// Attention per date as a small SVG line chart: one thin line per head, a thick one for the mean.

const SVG = "http://www.w3.org/2000/svg";
export const HEAD_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"];

function node(tag, attributes, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

// lines: [{values: [number|null], colour, width, name}], one value per date.
export function drawChart(svg, dates, lines) {
  const W = 360, H = 230, left = 34, right = 44, top = 10, bottom = 64;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const all = lines.flatMap((l) => l.values).filter((v) => v !== null && Number.isFinite(v));
  const peak = Math.max(1e-6, ...all);
  const x = (i) => left + (dates.length > 1 ? (i / (dates.length - 1)) * (W - left - right) : (W - left - right) / 2);
  const y = (v) => top + (1 - v / peak) * (H - top - bottom);
  svg.append(node("path", { d: `M${left},${top}V${H - bottom}H${W - right}`, fill: "none", stroke: "#999" }));
  svg.append(node("text", { x: 4, y: top + 8 }, peak.toFixed(2)));
  svg.append(node("text", { x: 4, y: H - bottom }, "0"));
  const every = Math.max(1, Math.ceil(dates.length / 12));
  dates.forEach((d, i) => {
    if (i % every) return;
    svg.append(node("text", { x: x(i) - 4, y: H - bottom + 12, transform: `rotate(40 ${x(i) - 4} ${H - bottom + 12})` }, d));
  });
  for (const line of lines) {
    const points = line.values
      .map((v, i) => (v === null || !Number.isFinite(v) ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`))
      .filter(Boolean);
    const attrs = { points: points.join(" "), fill: "none", stroke: line.colour, "stroke-width": line.width };
    const polyline = node("polyline", attrs);
    polyline.dataset.name = line.name;
    polyline.append(node("title", {}, line.name));
    svg.append(polyline);
    if (line.width > 1) {
      line.values.forEach((v, i) => {
        if (v !== null && Number.isFinite(v)) svg.append(node("circle", { cx: x(i), cy: y(v), r: 3, fill: line.colour }));
      });
    }
  }
}

// Lines of one item's attention: ``heads`` (heads x T, optional) and their ``mean``.
export function attentionLines(mean, heads) {
  const lines = (heads ?? []).map((values, h) => ({
    values, colour: HEAD_COLOURS[h % HEAD_COLOURS.length], width: 1, name: `head ${h}`,
  }));
  lines.push({ values: mean, colour: "#111", width: 3, name: "mean" });
  return lines;
}
