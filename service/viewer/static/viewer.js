// attnserve viewer: plain ES modules, no build step; the map library (Leaflet) is vendored.
// Pages are shells; everything is fetched from the JSON API with the tab's API key.
import { KEY, api, el, setStatus } from "./api.js";
import { attentionLines, drawChart } from "./chart.js";

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
      return;
    }
    if (job.state === "done") break;
    if (job.state === "failed" || job.state === "cancelled") {
      setStatus(`job ${job.state}: ${job.error?.message ?? ""}`, true);
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
  const kind = job.tiling ? "scene job" : "synchronous job";
  setStatus(`${job.model.name} ${job.model.version}, ${kind}`);
  if (job.georeference) {
    // The map library is loaded only by this page.
    const { showMap } = await import("./map.js");
    await showMap(job);
  } else {
    showSeries(job);
  }
}

// Series jobs: items, and a chart of attention per date ---------------------

function showSeries(job) {
  document.getElementById("series").hidden = false;
  const attention = job.attention[0];
  const byId = new Map((attention?.items ?? []).map((item) => [item.id, item]));
  const tbody = document.querySelector("#items tbody");
  const dates = job.dates?.length ? job.dates : job.days.map(String);
  const figure = document.getElementById("series-chart");
  for (const item of job.prediction.items) {
    const row = el("tr", {}, ...[item.id, item.class, item.confidence.toFixed(3)].map((text) => el("td", { text })));
    row.dataset.id = item.id;
    tbody.append(row);
    row.addEventListener("click", () => {
      tbody.querySelectorAll("tr").forEach((r) => r.classList.toggle("selected", r === row));
      const weights = byId.get(item.id);
      figure.querySelector("figcaption").textContent =
        `${attention?.name ?? "attention"} per date – ${item.id} (thin: heads, thick: mean)`;
      if (weights) drawChart(figure.querySelector("svg"), dates, attentionLines(weights.mean, weights.weights));
      document.body.dataset.chart = item.id;
    });
  }
  tbody.rows[0]?.click();
}

const pages = { upload: uploadPage, job: jobPage };
pages[document.body.dataset.page]?.()
  .catch((error) => setStatus(String(error.message ?? error), true))
  .finally(() => {
    document.body.dataset.ready = "1";
  });
