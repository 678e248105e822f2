"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.state import AppState
from service.jobs.store import JobRecord


def get_state(request: Request) -> AppState:
    """The app's shared state, set by the lifespan."""
    state: AppState = request.app.state.attnserve
    return state


State = Annotated[AppState, Depends(get_state)]


def get_owner(request: Request) -> str | None:
    """The owner tag of the caller's API key (None when auth is off)."""
    owner: str | None = getattr(request.state, "owner", None)
    return owner


Owner = Annotated[str | None, Depends(get_owner)]


def get_job(job_id: str, state: State, owner: Owner) -> JobRecord:
    """The caller's job ``job_id`` (404 if missing, expired or someone else's)."""
    return state.store.load(job_id, owner)


Job = Annotated[JobRecord, Depends(get_job)]
