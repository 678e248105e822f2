// Legends of map layers, from the colours the tile route uses (its /tiles listing).
import { el } from "./api.js";

// Viridis at every tenth of 0-1, as the server's tiles colour probabilities and
// attention; used where a job has no map tiles (no georeference) to list them.
export const VIRIDIS_STOPS = [
  "#440154", "#472575", "#404387", "#345e8d", "#29788e", "#20908c",
  "#22a784", "#42be71", "#79d151", "#bdde26", "#fde724",
];
// Class colours by index where a model names none (Tableau 10, as the tiles).
export const CLASS_COLOURS = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
];

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// 256 RGB steps interpolated between even ``stops``.
export function lutOf(stops) {
  const anchors = stops.map(hexToRgb);
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (anchors.length - 1);
    const k = Math.min(anchors.length - 2, Math.floor(t));
    const f = t - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = anchors[k][c] + (anchors[k + 1][c] - anchors[k][c]) * f;
  }
  return lut;
}

function colourBar(stops, lo, hi) {
  const canvas = el("canvas", { width: 256, height: 1 });
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(256, 1);
  const lut = lutOf(stops);
  for (let i = 0; i < 256; i++) {
    image.data.set([lut[i * 3], lut[i * 3 + 1], lut[i * 3 + 2], 255], i * 4);
  }
  ctx.putImageData(image, 0, 0);
  return el("div", { class: "bar" }, canvas, el("div", { class: "ends" }, el("span", { text: lo }), el("span", { text: hi })));
}

export function swatch(colour, extra = "") {
  const span = el("span", { class: `swatch ${extra}`.trim() });
  if (colour) span.style.background = colour;
  return span;
}

// The legend of one map layer: {type: continuous|classes|image, ...} as /jobs/{id}/tiles lists it.
export function legendOf(legend, description = "") {
  const box = el("div", { class: "legend" });
  box.dataset.type = legend.type;
  if (legend.type === "continuous") {
    const [lo, hi] = legend.range ?? [0, 1];
    box.append(colourBar(legend.stops ?? VIRIDIS_STOPS, String(lo), String(hi)));
    box.append(el("div", { text: `${legend.colormap ?? "viridis"}, ${lo} to ${hi}${description}` }));
  } else if (legend.type === "classes") {
    const list = el("ul");
    for (const c of legend.classes) list.append(el("li", {}, swatch(c.color), c.name));
    box.append(list);
  } else {
    box.append(el("div", { text: legend.stretch ? `colours stretched: ${legend.stretch}` : "" }));
  }
  return box;
}
