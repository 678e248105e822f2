// attnserve viewer: plain ES module, no build step, no dependencies.
// Pages are shells; everything is fetched from the JSON API with the tab's API key.

const KEY = "attnserve.apiKey";
const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];
const LUT = buildLut(VIRIDIS);
const HEAD_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"];

function buildLut(anchors) {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (anchors.length - 1);
    const k = Math.min(anchors.length - 2, Math.floor(t));
    const f = t - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = anchors[k][c] + (anchors[k + 1][c] - anchors[k][c]) * f;
  }
  return lut;
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorText(response) {
  try {
    const body = await response.json();
    const error = body.error;
    const message = typeof error === "string" ? error : error?.message;
    return `${response.status}: ${message ?? response.statusText}`;
  } catch {
    return `${response.status}: ${response.statusText}`;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers ?? {}) } });
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

function setStatus(text, isError = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// Upload page --------------------------------------------------------------

async function uploadPage() {
  const select = document.getElementById("model");
  const keyInput = document.getElementById("api-key");
  keyInput.value = sessionStorage.getItem(KEY) ?? "";
  keyInput.addEventListener("change", () => {
    sessionStorage.setItem(KEY, keyInput.value.trim());
    loadModels(select);
  });
  await loadModels(select);
  document.getElementById("upload").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData();
    form.append("model", select.value);
    form.append("image", document.getElementById("image").files[0]);
    if (document.getElementById("async").checked) form.append("async", "true");
    setStatus("uploading…");
    try {
      const job = await (await api("/predict", { method: "POST", body: form })).json();
      location.assign(`/viewer/${encodeURIComponent(job.job_id)}`);
    } catch (error) {
      setStatus(`prediction refused: ${error.message}`, true);
    }
  });
  document.body.dataset.ready = "1";
}

async function loadModels(select) {
  try {
    const { models } = await (await api("/models")).json();
    select.replaceChildren(...models.map((m) => new Option(`${m.name} ${m.latest} (${m.task})`, m.name)));
    setStatus("");
  } catch (error) {
    setStatus(`cannot list models: ${error.message}`, true);
  }
}

// Job page -----------------------------------------------------------------

async function jobPage() {
  const jobId = decodeURIComponent(location.pathname.split("/")[2] ?? "");
  document.getElementById("title").textContent = jobId;
  let job;
  for (;;) {
    try {
      job = await (await api(`/jobs/${encodeURIComponent(jobId)}`)).json();
    } catch (error) {
      setStatus(`cannot load job: ${error.message}`, true);
      document.body.dataset.ready = "1";
      return;
    }
    if (job.state === "done") break;
    if (job.state === "failed" || job.state === "cancelled") {
      setStatus(`job ${job.state}: ${job.error?.message ?? ""}`, true);
      document.body.dataset.ready = "1";
      return;
    }
    const bar = document.getElementById("progress");
    bar.hidden = false;
    bar.value = job.progress?.fraction ?? 0;
    const eta = job.eta_s == null ? "" : `, about ${Math.ceil(job.eta_s)} s left`;
    setStatus(`${job.state}: ${job.progress?.done ?? 0}/${job.progress?.total ?? "?"}${eta}`);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  document.getElementById("progress").hidden = true;
  setStatus(`${job.model.name} ${job.model.version}`);
  if (job.georeference) await showRaster(job);
  else await showSeries(job);
  document.body.dataset.ready = "1";
}

async function bitmapOf(path) {
  const response = await api(path);
  return { bitmap: await createImageBitmap(await response.blob()), range: response.headers.get("X-Value-Range") };
}

async function showRaster(job) {
  document.getElementById("raster").hidden = false;
  const layers = [...job.prediction.layers, ...job.attention].filter((l) => l.shape.length === 2);
  const base = document.getElementById("base");
  const overlay = document.getElementById("overlay");
  const vectors = document.getElementById("vectors");
  const cache = new Map();
  const first = await layerImage(job, layers[0], cache);
  for (const canvas of [base, overlay, vectors]) {
    canvas.width = first.width;
    canvas.height = first.height;
  }
  await drawInput(job, base);

  const fieldset = document.getElementById("layers");
  for (const layer of layers) {
    const label = document.createElement("label");
    const radio = Object.assign(document.createElement("input"), { type: "radio", name: "layer", value: layer.name });
    radio.dataset.layer = layer.name;
    radio.addEventListener("change", () => selectLayer(job, layer, cache, overlay));
    label.append(radio, ` ${layer.name}`);
    fieldset.append(label);
  }
  const opacity = document.getElementById("opacity");
  const applyOpacity = () => { overlay.style.opacity = opacity.value; };
  opacity.addEventListener("input", applyOpacity);
  applyOpacity();
  fieldset.querySelector("input").checked = true;
  await selectLayer(job, layers[0], cache, overlay);
  if (job.links?.footprints) await drawFootprints(job, vectors);
}

async function layerImage(job, layer, cache) {
  if (!cache.has(layer.name)) {
    const { bitmap, range } = await bitmapOf(`/viewer/${encodeURIComponent(job.job_id)}/layers/${encodeURIComponent(layer.name)}.png`);
    const scratch = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = scratch.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const image = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    const px = image.data;
    for (let i = 0; i < px.length; i += 4) {
      const v = px[i];
      px[i] = LUT[v * 3];
      px[i + 1] = LUT[v * 3 + 1];
      px[i + 2] = LUT[v * 3 + 2];
    }
    cache.set(layer.name, { image, range, width: bitmap.width, height: bitmap.height });
  }
  return cache.get(layer.name);
}

async function selectLayer(job, layer, cache, overlay) {
  const { image, range } = await layerImage(job, layer, cache);
  overlay.getContext("2d").putImageData(image, 0, 0);
  const [lo, hi] = (range ?? "0,1").split(",");
  const what = layer.description ? ` – ${layer.description}` : "";
  document.getElementById("legend").textContent = `${layer.name} (${layer.kind})${what}: dark ${lo} → yellow ${hi}`;
  document.body.dataset.layer = layer.name;
}

function keepsInput(job) {
  // Scene (tiled, asynchronous) jobs keep their input; synchronous answers do not,
  // and asking would log a 404. A job may also name its input preview in links.
  return Boolean(job.links?.input_preview || job.tiling);
}

async function drawInput(job, canvas) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#333";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!keepsInput(job)) return;
  const path = job.links?.input_preview ?? `/viewer/${encodeURIComponent(job.job_id)}/input.png`;
  const { bitmap } = await bitmapOf(path);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  document.body.dataset.input = "1";
}

async function drawFootprints(job, canvas) {
  const url = new URL(job.links.footprints, location.origin);
  url.searchParams.set("crs", "native");
  const collection = await (await api(url.pathname + url.search)).json();
  const [a, , c, , e, f] = job.georeference.transform;
  const sx = canvas.width / job.georeference.width;
  const sy = canvas.height / job.georeference.height;
  const ctx = canvas.getContext("2d");
  ctx.strokeStyle = "#ff2d55";
  ctx.lineWidth = 1.5;
  const ring = (coords) => {
    ctx.beginPath();
    coords.forEach(([x, y], i) => {
      const px = ((x - c) / a) * sx;
      const py = ((y - f) / e) * sy;
      if (i === 0) ctx.moveTo(px, py);
      else ctx.lineTo(px, py);
    });
    ctx.closePath();
    ctx.stroke();
  };
  for (const feature of collection.features) {
    const g = feature.geometry;
    const polygons = g.type === "Polygon" ? [g.coordinates] : g.type === "MultiPolygon" ? g.coordinates : [];
    polygons.forEach((rings) => rings.forEach(ring));
  }
  const toggle = document.getElementById("outline-toggle");
  toggle.hidden = false;
  document.getElementById("outlines").addEventListener("change", (event) => {
    canvas.hidden = !event.target.checked;
  });
  document.body.dataset.footprints = String(collection.features.length);
}

// Series jobs: parcels, and a chart of attention per date -------------------

async function showSeries(job) {
  document.getElementById("series").hidden = false;
  const attention = job.attention[0];
  const byId = new Map((attention?.items ?? []).map((item) => [item.id, item]));
  const tbody = document.querySelector("#items tbody");
  const dates = job.dates?.length ? job.dates : job.days.map(String);
  for (const item of job.prediction.items) {
    const row = tbody.insertRow();
    row.dataset.id = item.id;
    for (const text of [item.id, item.class, item.confidence.toFixed(3)]) row.insertCell().textContent = text;
    row.addEventListener("click", () => {
      tbody.querySelectorAll("tr").forEach((r) => r.classList.toggle("selected", r === row));
      drawChart(dates, byId.get(item.id), attention?.name ?? "attention", item.id);
    });
  }
  tbody.rows[0]?.click();
}

function drawChart(dates, item, name, id) {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, left = 40, bottom = 70, top = 10, right = 70;
  ctx.clearRect(0, 0, W, H);
  document.getElementById("chart-title").textContent = `${name} per date – ${id} (thin: heads, thick: mean)`;
  if (!item) return;
  const peak = Math.max(...item.weights.flat(), ...item.mean, 1e-6);
  const x = (i) => left + (dates.length > 1 ? (i / (dates.length - 1)) * (W - left - right) : (W - left - right) / 2);
  const y = (v) => top + (1 - v / peak) * (H - top - bottom);
  ctx.strokeStyle = "#999";
  ctx.beginPath(); ctx.moveTo(left, top); ctx.lineTo(left, H - bottom); ctx.lineTo(W - right, H - bottom); ctx.stroke();
  ctx.fillStyle = "#333";
  ctx.font = "11px sans-serif";
  ctx.fillText(peak.toFixed(2), 2, top + 8);
  ctx.fillText("0", 2, H - bottom);
  dates.forEach((d, i) => {
    ctx.save(); ctx.translate(x(i), H - bottom + 6); ctx.rotate(Math.PI / 4); ctx.fillText(d, 0, 0); ctx.restore();
  });
  const line = (values, colour, width) => {
    ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.beginPath();
    values.forEach((v, i) => (i === 0 ? ctx.moveTo(x(i), y(v)) : ctx.lineTo(x(i), y(v))));
    ctx.stroke();
  };
  item.weights.forEach((head, h) => line(head, HEAD_COLOURS[h % HEAD_COLOURS.length], 1));
  line(item.mean, "#111", 3);
  document.body.dataset.chart = id;
}

const pages = { upload: uploadPage, job: jobPage };
pages[document.body.dataset.page]?.().catch((error) => setStatus(String(error.message ?? error), true));
