"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import Depends, Request

from service.api.state import AppState
from service.errors import NotFound
from service.jobs.record import JobRecord, id_age_s
from service.runtime.repository import ServedModel

# The dependencies are coroutines although they never wait: FastAPI runs a plain
# function dependency on a worker thread, and the two hops cost a footprints
# request about 1 ms before its handler started (measured at concurrency 1).


async def get_state(request: Request) -> AppState:
    """The app's shared state, set by the lifespan."""
    state: AppState = request.app.state.attnserve
    return state


State = Annotated[AppState, Depends(get_state)]


def resolve_model(state: AppState, request: Request, ref: str) -> ServedModel:
    """The served model ``ref`` (``name`` for the latest version, or ``name:version``).

    Raises:
        NotFound: no such model or version is served.
    """
    served = state.repository.get(ref)
    # The Observe middleware labels request metrics by model.
    request.state.model = served.manifest.name
    return served


async def get_owner(request: Request) -> str | None:
    """The owner tag of the caller's API key (None when auth is off)."""
    owner: str | None = getattr(request.state, "owner", None)
    return owner


Owner = Annotated[str | None, Depends(get_owner)]


# How often a request polls for a job another replica is still writing behind.
UNWRITTEN_POLL_S = 0.02


async def get_job(job_id: str, state: State, owner: Owner) -> JobRecord:
    """The caller's job ``job_id`` (404 if missing, expired or someone else's).

    With write-behind on, a replica answers before its job is on disk, so a
    client that follows the answer's links to another replica can ask for a
    job not written yet. A job id made within ``job_write_behind_wait_s`` is
    then waited for, until that long after it was made.
    """
    store = state.store
    try:
        return await asyncio.to_thread(store.load, job_id, owner)
    except NotFound:
        wait_s = state.settings.job_write_behind_wait_s if store.write_behind else 0.0
        age = id_age_s(job_id)
        if age is None or not -wait_s < age < wait_s:
            raise
        deadline = time.monotonic() + wait_s - max(age, 0.0)
        # One stat per poll, on the loop: a flood of made-up fresh ids must not
        # fill the worker threads that decoding and job writes need.
        while not store.exists(job_id):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(UNWRITTEN_POLL_S)
        return await asyncio.to_thread(store.load, job_id, owner)


Job = Annotated[JobRecord, Depends(get_job)]
