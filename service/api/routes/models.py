"""The model repository: what is served, with each model's manifest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import FileResponse

from service.api.deps import State
from service.api.responses import JSONBody
from service.errors import NotFound
from service.runtime.repository import ServedModel

router = APIRouter(prefix="/models", tags=["models"])


def model_json(served: ServedModel) -> dict[str, Any]:
    """A served model version: its manifest plus how it runs."""
    m = served.manifest
    return {
        "name": m.name,
        "version": m.version,
        "ref": m.ref,
        "task": m.task,
        "description": m.description,
        "input": m.to_dict()["input"],
        "tensors": m.to_dict()["tensors"],
        "outputs": m.to_dict()["outputs"],
        "prediction": m.prediction.name,
        "attention_layers": [a.name for a in m.attention],
        "classes": m.classes,
        "metrics": m.metrics,
        "training": m.training,
        "providers": served.session.providers,
        "precision": served.session.precision,
        # How an int8 copy was made and what it lost against float32 (empty otherwise).
        "quantization": m.quantization,
        "batching": {
            "max_batch_size": served.batcher.max_batch_size,
            "max_queue_delay_ms": served.batcher.max_queue_delay_s * 1000,
            "max_queue_size": served.batcher.max_queue_size,
            # Sessions that run batches side by side while requests queue (CPU).
            "instances": max(1, served.batcher.helpers),
        },
    }


@router.get("", summary="List served models")
async def list_models(state: State) -> JSONBody:
    """Every served model with its versions; ``latest`` is what ``name`` resolves to."""
    repo = state.repository
    models = []
    for name in repo.names():
        versions = repo.versions(name)
        latest = versions[-1]
        models.append(
            {
                "name": name,
                "latest": latest.manifest.version,
                "versions": [v.manifest.version for v in versions],
                "task": latest.manifest.task,
                "bands": latest.manifest.input.bands,
                "classes": latest.manifest.classes,
                "attention_layers": [a.name for a in latest.manifest.attention],
                "url": f"/models/{name}",
            }
        )
    return JSONBody({"models": models})


@router.get("/{ref}", summary="One model's manifest")
async def get_model(ref: str, state: State) -> JSONBody:
    """``name`` (latest version) or ``name:version``: manifest, inputs, outputs, classes."""
    served = state.repository.get(ref)
    body = model_json(served)
    body["versions"] = [v.manifest.version for v in state.repository.versions(served.manifest.name)]
    return JSONBody(body)


@router.get(
    "/{ref}/onnx",
    summary="One model's ONNX file",
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def get_model_file(ref: str, state: State) -> FileResponse:
    """The ONNX file the server runs for ``ref``, as loaded (a sidecar manifest is not in it:
    ``GET /models/{ref}`` gives the manifest). 404 where the server keeps model files to itself
    (``ATTNSERVE_MODEL_DOWNLOADS=false``)."""
    if not state.settings.model_downloads:
        raise NotFound("this server does not hand out model files (ATTNSERVE_MODEL_DOWNLOADS)")
    served = state.repository.get(ref)
    m = served.manifest
    return FileResponse(
        served.path,
        media_type="application/octet-stream",
        filename=f"{m.name}-{m.version}.onnx",
        # name:version names one file for good; a bare name follows the latest version.
        headers={
            "Cache-Control": "private, max-age=31536000, immutable" if ":" in ref else "no-cache"
        },
    )
