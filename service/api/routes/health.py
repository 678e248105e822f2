"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import State
from service.api.responses import JSONBody
from service.runtime.cpus import process_cpus
from service.versions import stack_versions

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness, with versions")
async def healthz(state: State) -> JSONBody:
    """Alive as long as the process answers; versions of the moving parts."""
    return JSONBody(
        {
            "status": "ok",
            **stack_versions(),
            # What thread pools are sized by (a container's quota, not the host).
            "cpus": process_cpus().to_json(),
        }
    )


def readiness(state: State) -> tuple[bool, dict[str, Any]]:
    """Whether the server should get traffic, and why not."""
    repo = state.repository
    models = {
        m.manifest.ref: {"providers": m.session.providers, "cuda": m.session.cuda_active}
        for m in repo.all()
    }
    reasons: list[str] = []
    if state.draining:
        reasons.append("shutting down")
    if repo.state != "ready":
        reasons.append(f"model repository is {repo.state}")
    queue = state.jobs.manager.problem()
    if queue:
        reasons.append(queue)
    if state.settings.require_cuda:
        cpu_only = [ref for ref, info in models.items() if not info["cuda"]]
        if cpu_only:
            reasons.append(f"CUDA is required but not active for {', '.join(cpu_only)}")
    body = {
        "ready": not reasons,
        "reasons": reasons,
        "models": models,
        # Scene jobs' queue: a shared one reached once keeps the replica ready
        # when Redis goes (synchronous work goes on); "reachable" says so.
        "queue": state.jobs.manager.status(),
        "failed_files": sorted(repo.failures),
        # Each model file not served, with the reason (a manifest field at fault, say).
        "skipped": [
            {"file": name, "reason": repo.failures[name]} for name in sorted(repo.failures)
        ],
    }
    return not reasons, body


@router.get("/readyz", summary="Readiness")
async def readyz(state: State) -> JSONBody:
    """200 when models are loaded (on CUDA where required) and not draining, else 503."""
    ready, body = readiness(state)
    return JSONBody(body, status_code=200 if ready else 503)
