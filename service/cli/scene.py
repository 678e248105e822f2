"""``attnserve scene run --units-of JOB_ID``: work the shared queue without the HTTP server.

For batch runs (a Kubernetes Indexed Job): the process loads the models and
takes units from the shared queue as a server replica does, with the same
settings (``ATTNSERVE_QUEUE_URL``, ``ATTNSERVE_JOB_STORE``, ...), until the job
named is over. Units are taken in queue order, so units of other jobs waiting
before it are worked too; several such processes share the job's units, and a
unit of one that dies is claimed by another.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import TYPE_CHECKING

from service.cli.base import Commands, fail

if TYPE_CHECKING:
    from service.config import Settings

# How often the job's record is looked at.
POLL_S = 2.0


def add_parser(sub: Commands) -> None:
    """Declare ``scene run``."""
    p = sub.add_parser("scene", help="scene jobs from the shared work queue, without a server")
    scene = p.add_subparsers(dest="scene_command", required=True, metavar="SUBCOMMAND")
    run = scene.add_parser(
        "run", help="work units from the shared queue until a job is over (exit 0 when done)"
    )
    run.add_argument(
        "--units-of", required=True, metavar="JOB_ID", help="the scene job to see through"
    )
    run.add_argument(
        "--timeout-s", type=float, default=0.0, help="give up after this long (0: never)"
    )
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.config import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return fail(f"invalid settings: {problems}", 2)
    if not settings.queue_url:
        return fail(
            "ATTNSERVE_QUEUE_URL is not set: there is no shared queue to take units from", 2
        )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    return asyncio.run(work_units(settings, args.units_of, args.timeout_s))


async def work_units(settings: Settings, job_id: str, timeout_s: float) -> int:
    """Take units until job ``job_id`` is over; 0 when it is done."""
    from service.app import build_state
    from service.errors import NotFound
    from service.metrics import Metrics
    from service.pipeline.shared_jobs import SharedJobs, replica_name

    state = build_state(settings, Metrics())
    manager = state.jobs.manager
    assert isinstance(manager, SharedJobs)
    try:
        record = await asyncio.to_thread(state.store.load, job_id, None, True)
    except NotFound:
        return fail(f"no such job {job_id!r} in {state.store.address}")
    await state.repository.load()
    if state.repository.state != "ready":
        return fail(f"no model could be loaded from {settings.model_dir}")
    await manager.start()
    started = time.monotonic()
    try:
        while not record.finished:
            if timeout_s and time.monotonic() - started > timeout_s:
                return fail(f"job {job_id} is not over after {timeout_s:g} s")
            await asyncio.sleep(POLL_S)
            try:
                record = await asyncio.to_thread(state.store.load, job_id, None, True)
            except NotFound:
                return fail(f"job {job_id} was deleted")
    finally:
        await manager.stop(settings.shutdown_grace_s)
        await state.repository.stop(settings.shutdown_grace_s)
    mine = (record.params.get("workers") or {}).get(replica_name(), 0)
    print(f"job {job_id}: {record.state}; units worked here: {mine}")
    if record.state != "done":
        return fail(f"job {job_id} is {record.state}: {(record.error or {}).get('message', '')}")
    return 0
