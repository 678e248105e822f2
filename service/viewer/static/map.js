// A raster job on a slippy map (Leaflet, vendored): its input image as the base
// layer, its result layers as tile overlays with opacity and legends, footprint
// outlines with popups, and every layer's values (per-date attention as a chart)
// where the map is clicked.
import { api, authHeaders, el, formatValue } from "./api.js";
import { attentionLines, drawChart } from "./chart.js";
import { CLASS_COLOURS, VIRIDIS_STOPS, legendOf, lutOf, swatch } from "./legend.js";

const L = window.L;
const OUTLINE = "#ff2d55";
const MAX_ZOOM = 22;

// Tiles fetched with the API key (an <img> cannot send one), shown from blob URLs.
const KeyedTileLayer = L.TileLayer.extend({
  createTile(coords, done) {
    const img = document.createElement("img");
    img.alt = "";
    fetch(this.getTileUrl(coords), { headers: authHeaders() })
      .then((response) => {
        if (!response.ok) throw new Error(`tile ${response.status}`);
        return response.blob();
      })
      .then((blob) => {
        const url = URL.createObjectURL(blob);
        img.onload = () => {
          URL.revokeObjectURL(url);
          done(null, img);
        };
        img.src = url;
      })
      .catch((error) => done(error, img));
    return img;
  },
});

function tileLayer(url, options) {
  return Object.keys(authHeaders()).length ? new KeyedTileLayer(url, options) : L.tileLayer(url, options);
}

function note(text) {
  const p = document.getElementById("note");
  p.textContent = text;
  p.hidden = !text;
}

// The job layer a map layer shows: ``name`` itself, or ``name:<class or date>``.
function groupOf(job, mapLayer) {
  const layers = [...job.prediction.layers, ...job.attention];
  const owner = layers.find((l) => mapLayer.name === l.name || mapLayer.name.startsWith(`${l.name}:`));
  const key = owner && mapLayer.name !== owner.name ? mapLayer.name.slice(owner.name.length + 1) : null;
  return { owner: owner ?? { name: mapLayer.name, kind: "" }, key };
}

// One overlay's row in the panel: switch, class or date picker, opacity, legend.
function overlayRow({ name, title, keys, legend, checked, opacity, onToggle, onOpacity, onKey }) {
  const box = el("input", { type: "checkbox", checked });
  box.dataset.layer = name;
  box.addEventListener("change", () => onToggle(box.checked));
  const row = el("div", { class: "overlay" }, el("label", {}, box, " ", el("span", { class: "name", text: name }), ` ${title}`));
  row.dataset.overlay = name;
  if (keys && keys.length > 1) {
    const select = el("select", { "aria-label": `${name}: which one` });
    select.dataset.layer = name;
    for (const key of keys) select.append(new Option(key, key));
    select.addEventListener("change", () => onKey(select.value));
    row.append(select);
  }
  if (onOpacity) {
    const slider = el("input", { type: "range", min: "0", max: "1", step: "0.05", value: String(opacity) });
    slider.dataset.layer = name;
    slider.addEventListener("input", () => onOpacity(Number(slider.value)));
    row.append(el("label", { class: "opacity" }, "opacity", slider));
  }
  if (legend) row.append(legend);
  document.getElementById("overlays").append(row);
  return row;
}

// An overlay on the map with its row in the panel; the first one starts switched on.
function addOverlay(map, overlays, overlay, row) {
  overlays.push(overlay);
  const first = overlays.length === 1;
  overlayRow({
    ...row,
    name: overlay.name,
    checked: first,
    opacity: overlay.layer.options.opacity,
    onToggle: (on) => {
      if (on) map.addLayer(overlay.layer);
      else map.removeLayer(overlay.layer);
      visibleOverlays(map, overlays);
    },
    onOpacity: (value) => overlay.layer.setOpacity(value),
  });
  if (first) map.addLayer(overlay.layer);
  visibleOverlays(map, overlays);
}

function visibleOverlays(map, overlays) {
  document.body.dataset.overlays = overlays.filter((o) => map.hasLayer(o.layer)).map((o) => o.name).join(",");
}

export async function showMap(job) {
  document.getElementById("raster").hidden = false;
  showChannels(job);
  if (job.georeference?.crs) await showGeoreferenced(job);
  else await showPixels(job);
}

// Channel attention has no map: one weight per input band for the whole image or
// scene, drawn as bars scaled to the layer's largest weight, with the values.
function showChannels(job) {
  const layers = job.attention.filter((l) => l.kind === "channel" && l.weights);
  const panel = document.getElementById("channels");
  for (const layer of layers) {
    const weights = Object.entries(layer.weights);
    const top = Math.max(...weights.map(([, w]) => Math.abs(w)), 1e-12);
    const rows = weights.map(([band, w]) => {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${(100 * Math.abs(w)) / top}%`;
      const row = el("tr", {}, el("td", { text: band }), el("td", { class: "bars" }, bar), el("td", { text: formatValue(w) }));
      row.dataset.band = band;
      return row;
    });
    const table = el("table", { class: "channel" }, el("tbody", {}, ...rows));
    table.dataset.layer = layer.name;
    panel.append(el("p", { class: "name", text: layer.name }), table);
  }
  panel.append(el("p", { class: "hint", text: "How strongly the model weighted each band of this image: one number per band, not a place." }));
  panel.hidden = !layers.length;
  document.body.dataset.channels = layers.map((l) => l.name).join(",");
}

async function showGeoreferenced(job) {
  const id = encodeURIComponent(job.job_id);
  const { layers } = await (await api(`/jobs/${id}/tiles`)).json();
  if (!layers.length) {
    note("This job has no raster layers to draw on a map.");
    return;
  }
  const input = layers.find((l) => l.name === "input");
  const results = layers.filter((l) => l !== input);
  const tilejson = await (await api(`/jobs/${id}/tilejson/${encodeURIComponent(layers[0].name)}.json`)).json();
  const [west, south, east, north] = tilejson.bounds;
  const bounds = L.latLngBounds([south, west], [north, east]);
  const map = L.map("map", { maxZoom: MAX_ZOOM });
  map.dataBounds = bounds;
  window.attnserveMap = map; // for scripted checks of the page
  // Tiles are drawn at every zoom (up to the server's 24) rather than scaled up from
  // the raster's own zoom: class and probability pixels stay sharp squares.
  const options = { bounds, maxZoom: MAX_ZOOM, tileSize: 256 };

  // Base layer: the input image where the job kept it, else a plain background.
  const bases = document.getElementById("bases");
  const choices = [];
  if (input) choices.push({ name: "input", title: "input image", layer: tileLayer(input.tiles, { ...options, zIndex: 1 }) });
  choices.push({ name: "none", title: "none", layer: null });
  let current = null;
  const pick = (choice) => {
    if (current) map.removeLayer(current);
    current = choice.layer;
    if (current) map.addLayer(current);
    document.body.dataset.base = choice.name;
  };
  choices.forEach((choice, i) => {
    const radio = el("input", { type: "radio", name: "base", checked: i === 0 });
    radio.dataset.base = choice.name;
    radio.addEventListener("change", () => pick(choice));
    bases.append(el("label", {}, radio, ` ${choice.title}`));
  });
  if (input) bases.append(legendOf(input.legend));
  else note("This job kept no input image (only scene jobs do): its layers are drawn on a plain background.");
  pick(choices[0]);

  // Overlays: one per job layer, with a picker where it has a map layer per class or date.
  const groups = new Map();
  for (const mapLayer of results) {
    const { owner, key } = groupOf(job, mapLayer);
    if (!groups.has(owner.name)) groups.set(owner.name, { owner, members: [] });
    groups.get(owner.name).members.push({ ...mapLayer, key });
  }
  const overlays = [];
  [...groups.values()].forEach(({ owner, members }, i) => {
    const first = members[0];
    const overlay = {
      name: owner.name,
      layer: tileLayer(first.tiles, { ...options, opacity: i === 0 ? 0.5 : 0.7, zIndex: 10 + i }),
    };
    const description = owner.kind ? ` (${owner.kind})` : "";
    addOverlay(map, overlays, overlay, {
      title: description,
      keys: members.map((m) => m.key).filter((k) => k !== null),
      legend: legendOf(first.legend),
      onKey: (key) => overlay.layer.setUrl(members.find((m) => m.key === key).tiles),
    });
  });

  const marker = L.circleMarker(bounds.getCenter(), {
    radius: 6, color: "#fff", weight: 2, fillColor: "#111", fillOpacity: 1, interactive: false,
  });
  const clickAt = (latlng) => {
    marker.setLatLng(latlng).addTo(map);
    if (!bounds.contains(latlng)) {
      showPointMessage("Outside the job's raster: nothing to show here.");
      return;
    }
    queryPoint(job, `lon=${latlng.lng.toFixed(8)}&lat=${latlng.lat.toFixed(8)}`);
  };
  map.on("click", (event) => clickAt(event.latlng));
  // A click on a footprint opens its popup (and goes no further): it reads the values there too.
  if (job.links?.footprints) await showFootprints(job, map, clickAt);
  map.fitBounds(bounds);
  await whenTilesLoad(map);
}

function whenTilesLoad(map) {
  // Resolves once the first tiles of every visible tile layer have loaded (or failed).
  const pending = [];
  map.eachLayer((layer) => {
    if (layer instanceof L.TileLayer && layer.isLoading()) {
      pending.push(new Promise((resolve) => layer.once("load", resolve)));
    }
  });
  return Promise.race([Promise.all(pending), new Promise((resolve) => setTimeout(resolve, 20000))]);
}

async function showFootprints(job, map, clickAt) {
  const url = job.links.footprints;
  let collection;
  try {
    collection = await (await api(url)).json();
  } catch (error) {
    note(`Footprints not drawn: ${error.message}`);
    return;
  }
  const outlines = L.geoJSON(collection, {
    style: { color: OUTLINE, weight: 2, opacity: 1, fill: true, fillOpacity: 0.06, className: "footprint" },
    onEachFeature: (feature, layer) => {
      layer.bindPopup(() => popupOf(feature));
      layer.on("click", (event) => clickAt(event.latlng));
    },
  }).addTo(map);
  map.on("popupopen", (event) => {
    document.body.dataset.popup = String(event.popup._source?.feature?.id ?? "");
  });
  map.on("popupclose", () => delete document.body.dataset.popup);
  const count = collection.features.length;
  const box = el("div", { class: "legend" }, swatch(null, "outline"), `${count} outline${count === 1 ? "" : "s"}; click one for its values`);
  overlayRow({
    name: "footprints",
    title: "(vector outlines)",
    legend: box,
    checked: true,
    onToggle: (on) => (on ? map.addLayer(outlines) : map.removeLayer(outlines)),
  });
  document.body.dataset.footprints = String(count);
}

function popupOf(feature) {
  const p = feature.properties ?? {};
  const rows = [];
  if (p.class !== undefined) rows.push(["class", p.class]);
  if (p.mean_probability !== undefined) rows.push(["mean probability", p.mean_probability]);
  if (p.mean_attention !== undefined) rows.push(["mean attention", p.mean_attention]);
  for (const [name, value] of Object.entries(p.attention ?? {})) rows.push([`mean ${name}`, value]);
  if (p.area_m2 !== undefined) rows.push(["area", `${formatValue(p.area_m2, 1)} m²`]);
  else if (p.area_px !== undefined) rows.push(["area", `${formatValue(p.area_px, 1)} px`]);
  const table = el("table", { class: "popup" });
  for (const [name, value] of rows) table.append(el("tr", {}, el("td", { text: name }), el("td", { text: formatValue(value) })));
  return el("div", {}, el("strong", { text: `footprint ${feature.id ?? ""}` }), table);
}

function showPointMessage(text) {
  document.getElementById("point").hidden = false;
  document.getElementById("point-title").textContent = text;
  document.querySelector("#point-values tbody").replaceChildren();
  document.getElementById("point-chart").hidden = true;
}

async function queryPoint(job, query) {
  let body;
  try {
    body = await (await api(`/jobs/${encodeURIComponent(job.job_id)}/point?${query}`)).json();
  } catch (error) {
    showPointMessage(`No values here: ${error.message}`);
    return;
  }
  showPointMessage(
    body.lon === undefined
      ? `At row ${body.row}, column ${body.col}`
      : `At ${body.lat.toFixed(6)}, ${body.lon.toFixed(6)} (row ${body.row}, column ${body.col})`,
  );
  const tbody = document.querySelector("#point-values tbody");
  const add = (name, value) => tbody.append(el("tr", {}, el("td", { text: name }), el("td", { text: formatValue(value) })));
  let series = null;
  for (const layer of body.layers) {
    if (layer.values === undefined) {
      add(layer.name, layer.class ? `${layer.class} (${layer.value})` : layer.value);
    } else if (layer.dates) {
      series = series ?? layer;
      const valid = layer.values.map((v, i) => [v, i]).filter(([v]) => v !== null);
      const [, top] = valid.reduce((a, b) => (b[0] > a[0] ? b : a), [-Infinity, -1]);
      add(`${layer.name}: highest on`, top >= 0 ? layer.dates[top] : null);
    } else {
      // Per class (or per band): the three highest, most likely first.
      const keys = layer.classes ?? layer.values.map((_, i) => String(i));
      const ranked = layer.values.map((v, i) => [v, keys[i]]).filter(([v]) => v !== null).sort((a, b) => b[0] - a[0]);
      const top = ranked.slice(0, 3).map(([v, key]) => `${key} ${formatValue(v)}`).join(", ");
      add(`${layer.name} (highest)`, ranked.length ? top : null);
    }
  }
  const figure = document.getElementById("point-chart");
  if (series) {
    figure.hidden = false;
    const heads = series.heads ? ` (thin: ${series.heads.length} heads, thick: mean)` : " (mean over heads)";
    figure.querySelector("figcaption").textContent = `${series.name} per date${heads}`;
    drawChart(figure.querySelector("svg"), series.dates, attentionLines(series.values, series.heads));
    document.body.dataset.chart = `${body.row},${body.col}`;
  }
  document.body.dataset.point = `${body.row},${body.col}`;
}

// Jobs without a usable georeference: their layers on the pixel grid (no base map).
async function showPixels(job) {
  const { width, height } = job.georeference;
  const bounds = L.latLngBounds([-height, 0], [0, width]);
  const map = L.map("map", { crs: L.CRS.Simple, minZoom: -6, maxZoom: 6, zoomSnap: 0.25 });
  map.dataBounds = bounds;
  window.attnserveMap = map;
  map.fitBounds(bounds);
  const bases = document.getElementById("bases");
  bases.append(el("p", { class: "hint", text: "none: the image has no usable georeference" }));
  note("This image has no usable georeference: its layers are drawn on its own pixel grid (row 0 at the top), without a base map.");
  const layers = [...job.prediction.layers, ...job.attention].filter((l) => l.shape?.length === 2);
  const overlays = [];
  for (const [i, layer] of layers.entries()) {
    const { url, range } = await colouredPreview(job, layer);
    const overlay = { name: layer.name, layer: L.imageOverlay(url, bounds, { opacity: i === 0 ? 0.8 : 0.7, className: "pixels" }) };
    const legend = layer.kind === "class"
      ? { type: "classes", classes: (layer.classes ?? []).map((name, k) => ({ name, color: classColour(layer, k) })) }
      : { type: "continuous", colormap: "viridis", range, stops: VIRIDIS_STOPS };
    addOverlay(map, overlays, overlay, { title: `(${layer.kind})`, legend: legendOf(legend) });
  }
  map.on("click", (event) => {
    const row = Math.floor(-event.latlng.lat);
    const col = Math.floor(event.latlng.lng);
    if (row < 0 || row >= height || col < 0 || col >= width) {
      showPointMessage("Outside the image: nothing to show here.");
      return;
    }
    queryPoint(job, `row=${row}&col=${col}`);
  });
}

function classColour(layer, index) {
  return layer.class_colors?.[index] ?? CLASS_COLOURS[index % CLASS_COLOURS.length];
}

// A layer's grey preview coloured as its tiles would be: viridis, or its class colours.
async function colouredPreview(job, layer) {
  const path = `/viewer/${encodeURIComponent(job.job_id)}/layers/${encodeURIComponent(layer.name)}.png`;
  const response = await api(path);
  const [lo, hi] = (response.headers.get("X-Value-Range") ?? "0,1").split(",").map(Number);
  const bitmap = await createImageBitmap(await response.blob());
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const image = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  const px = image.data;
  const classes = layer.kind === "class" ? Math.max(1, (layer.classes?.length ?? 1) - 1) : 0;
  const lut = classes
    ? lutOf(Array.from({ length: 256 }, (_, g) => classColour(layer, Math.round((g / 255) * classes))))
    : lutOf(VIRIDIS_STOPS);
  for (let i = 0; i < px.length; i += 4) {
    const v = px[i];
    px[i] = lut[v * 3];
    px[i + 1] = lut[v * 3 + 1];
    px[i + 2] = lut[v * 3 + 2];
  }
  ctx.putImageData(image, 0, 0);
  const blob = await canvas.convertToBlob({ type: "image/png" });
  return { url: URL.createObjectURL(blob), range: [Number(lo.toPrecision(3)), Number(hi.toPrecision(3))] };
}
