"""A Python client for attnserve: httpx and the standard library only.

It needs none of the server's dependencies (no numpy, rasterio, FastAPI or ONNX
Runtime), so it can be installed next to a notebook or a GIS. It uploads
scenes, follows asynchronous jobs with a progress bar, downloads the GeoTIFF
and GeoJSON artefacts, and sends crop series from CSV or JSON.

    client = Client("http://127.0.0.1:8000", api_key=None)
    job = client.predict_image("scene.tif", "footprints")
    job = client.wait(job, on_progress=print)
    files = client.save_artefacts(job, Path("out"), stem="scene")
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol, TextIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
# Downloaded artefacts: link name in a job's ``links`` -> file suffix.
ARTEFACTS = {
    "prediction_geotiff": ".prediction.tif",
    "attention_geotiff": ".attention.tif",
    "footprints": ".footprints.geojson",
}


class ServerError(Exception):
    """The server answered 4xx or 5xx; ``message`` is its own explanation."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class JobFailed(Exception):
    """An asynchronous job ended failed or cancelled."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        message = error.get("message") or f"job {job.get('state', 'failed')}"
        super().__init__(f"job {job.get('job_id')} {job.get('state')}: {message}")
        self.job = job


def error_of(response: httpx.Response) -> ServerError:
    """The server's error, from either error shape it uses.

    ``{"error": {"code", "message", "status"}}`` everywhere, and the Open
    Inference Protocol's ``{"error": "<message>", "code": ...}`` under ``/v2``.
    """
    code, message = "error", response.reason_phrase or "error"
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
        elif isinstance(error, str):
            code = str(body.get("code", code))
            message = error
    return ServerError(response.status_code, code, message)


@dataclass(frozen=True)
class Progress:
    """How far a job is: units done of total (tiles, or series chunks)."""

    done: int
    total: int
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        """Done over total, 0 when the total is not known yet."""
        return self.done / self.total if self.total else 0.0


class Client:
    """Talks to one attnserve server.

    Args:
        url: the server's base URL.
        api_key: sent as ``Authorization: Bearer`` (default: ``ATTNSERVE_API_KEY``).
        timeout_s: per-request timeout.
        transport: an httpx transport (tests use ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("ATTNSERVE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise error_of(response)
        return response

    def models(self) -> list[dict[str, Any]]:
        """The served models (name, versions, task, bands, classes, attention layers)."""
        models: list[dict[str, Any]] = self._request("GET", "/models").json()["models"]
        return models

    def model(self, ref: str) -> dict[str, Any]:
        """One model's manifest (``name`` or ``name:version``)."""
        body: dict[str, Any] = self._request("GET", f"/models/{ref}").json()
        return body

    def predict_image(self, path: Path | str, model: str, async_: bool = False) -> dict[str, Any]:
        """Upload a GeoTIFF; the answer is a finished job (200) or a queued one (202)."""
        path = Path(path)
        data = {"model": model}
        if async_:
            data["async"] = "true"
        with path.open("rb") as f:
            files = {"image": (path.name, f, "image/tiff")}
            body: dict[str, Any] = self._request("POST", "/predict", data=data, files=files).json()
        return body

    def predict_series(self, request: dict[str, Any]) -> dict[str, Any]:
        """Classify parcels' series: ``request`` is the JSON body of ``/predict``."""
        body: dict[str, Any] = self._request("POST", "/predict", json=request).json()
        return body

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's state (and results once done)."""
        body: dict[str, Any] = self._request("GET", f"/jobs/{job_id}").json()
        return body

    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job."""
        self._request("DELETE", f"/jobs/{job_id}")

    def wait(
        self,
        job: dict[str, Any],
        on_progress: Callable[[Progress], None] | None = None,
        poll_s: float = 0.5,
        max_poll_s: float = 3.0,
    ) -> dict[str, Any]:
        """Follow a job until it is done; a synchronous answer is returned as is.

        Raises:
            JobFailed: the job failed or was cancelled.
        """
        delay = poll_s
        while job.get("state", "done") not in FINAL_STATES:
            if on_progress is not None:
                on_progress(progress_of(job))
            time.sleep(delay)
            delay = min(max_poll_s, delay * 1.5)
            job = self.job(str(job["job_id"]))
        if job.get("state", "done") != "done":
            raise JobFailed(job)
        if on_progress is not None:
            final = progress_of(job)
            total = final.total or 1
            on_progress(Progress(total, total, 0.0))
        return job

    def download(self, link: str, dest: Path) -> Path:
        """Stream one of a job's links to ``dest`` (written whole, then renamed)."""
        tmp = dest.with_name(dest.name + ".part")
        with self._http.stream("GET", link) as response:
            if response.status_code >= 400:
                response.read()
                raise error_of(response)
            with tmp.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        tmp.replace(dest)
        return dest

    def save_artefacts(self, job: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
        """Download a finished job's GeoTIFFs and GeoJSON into ``out_dir``; writes the job JSON.

        Returns:
            Link name -> written file, for the artefacts the job has.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        links: dict[str, str] = job.get("links") or {}
        written: dict[str, Path] = {}
        for name, suffix in ARTEFACTS.items():
            if name in links:
                written[name] = self.download(links[name], out_dir / f"{stem}{suffix}")
        job_path = out_dir / f"{stem}.job.json"
        job_path.write_text(json.dumps(job, indent=2))
        written["job"] = job_path
        return written


def progress_of(job: dict[str, Any]) -> Progress:
    """A job's progress from its JSON (zeros while it is not known)."""
    p = job.get("progress") or {}
    eta = job.get("eta_s")
    return Progress(int(p.get("done", 0)), int(p.get("total", 0)), eta)


class ProgressBar(Protocol):
    """Shows a job's progress."""

    def __call__(self, progress: Progress) -> None:
        """Show ``progress``."""

    def close(self) -> None:
        """Finish the bar's line."""


class PlainBar:
    """A one-line text progress bar, for when tqdm is not installed."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self._last = ""

    def __call__(self, progress: Progress) -> None:
        """Redraw the bar if it changed."""
        filled = round(self.width * progress.fraction)
        bar = "#" * filled + "-" * (self.width - filled)
        eta = "" if progress.eta_s is None else f" eta {math.ceil(progress.eta_s)}s"
        line = (
            f"{self.label} [{bar}] {progress.fraction:4.0%} {progress.done}/{progress.total}{eta}"
        )
        if line != self._last:
            self.stream.write("\r" + line)
            self.stream.flush()
            self._last = line

    def close(self) -> None:
        """End the line."""
        if self._last:
            self.stream.write("\n")
            self.stream.flush()


class TqdmBar:
    """A tqdm progress bar fed with a job's done/total."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=0, desc=label, unit="tile", file=stream or sys.stderr, dynamic_ncols=True
        )

    def __call__(self, progress: Progress) -> None:
        """Move the bar to ``progress``."""
        if progress.total and self._bar.total != progress.total:
            self._bar.total = progress.total
        self._bar.update(progress.done - self._bar.n)

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()


def progress_bar(label: str, stream: TextIO | None = None, plain: bool = False) -> ProgressBar:
    """tqdm's bar when it is installed (and not refused), else a plain one."""
    if not plain:
        try:
            return TqdmBar(label, stream)
        except ImportError:
            pass
    return PlainBar(label, stream)


def read_series_csv(path: Path, model: str, bands: list[str]) -> dict[str, Any]:
    """A ``/predict`` JSON body from a CSV of one row per parcel and date.

    Columns: ``id``, ``date`` (ISO), one column per band in ``bands`` (reflectance
    x 10000) and optionally ``valid`` (0/1, false/true). Dates a parcel lacks are
    sent as invalid.

    Raises:
        ValueError: a missing column or a value that is not a number or a date.
    """
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        missing = [c for c in ("id", "date", *bands) if c not in columns]
        if missing:
            raise ValueError(f"{path.name}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path.name}: no rows")
    parcels: dict[str, dict[date, tuple[list[float], bool]]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            day = date.fromisoformat(row["date"].strip())
            values = [float(row[b]) for b in bands]
        except ValueError as exc:
            raise ValueError(f"{path.name} line {line}: {exc}") from None
        valid = str(row.get("valid", "1")).strip().lower() not in ("0", "false", "no", "")
        parcels.setdefault(row["id"], {})[day] = (values, valid)
    dates = sorted({d for series in parcels.values() for d in series})
    body: dict[str, Any] = {"model": model, "dates": [d.isoformat() for d in dates], "parcels": []}
    for parcel_id, series in parcels.items():
        rows_out = [series.get(d, ([0.0] * len(bands), False)) for d in dates]
        body["parcels"].append(
            {
                "id": parcel_id,
                "series": [values for values, _ in rows_out],
                "valid": [valid for _, valid in rows_out],
            }
        )
    return body


def series_table(answer: dict[str, Any]) -> Iterable[str]:
    """Lines summarising a series answer: class, confidence and mean attention per date."""
    dates = answer.get("dates") or [str(d) for d in answer.get("days", [])]
    attention = {}
    if answer.get("attention"):
        attention = {it["id"]: it["mean"] for it in answer["attention"][0].get("items", [])}
    yield "id\tclass\tconfidence\t" + "\t".join(str(d) for d in dates)
    for item in answer["prediction"]["items"]:
        weights = attention.get(item["id"], [])
        cells = "\t".join(f"{w:.3f}" for w in weights)
        yield f"{item['id']}\t{item['class']}\t{item['confidence']:.3f}\t{cells}"
