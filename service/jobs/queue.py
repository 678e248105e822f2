"""The shared work queue on Redis: scene jobs' units in Streams, read by one consumer group.

Why Redis Streams: a consumer group gives each entry to one replica
(``XREADGROUP``), keeps it pending until that replica acknowledges it
(``XACK``, sent only once the unit's partial sums are stored) and lets any
replica take over entries whose consumer went quiet (``XAUTOCLAIM`` past
``claim_after_s``): at-least-once delivery with claiming of a dead replica's
work, from Redis alone. A replica that works on a unit for long touches its
entry (``XCLAIM ... JUSTID`` to itself) so that it is not taken meanwhile.

Two streams give priority: ``urgent`` holds the units of small jobs and
finishing steps, ``bulk`` those of large jobs; a free replica reads
``urgent`` first, so a small job is never stuck behind a country-sized one.
Entries are deleted once acknowledged: a stream's length is its units
waiting or in flight.

Per job, Redis keeps its unit count and owner, the units done, the units each
replica finished, attempts per unit and a stop flag, expiring with the job.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from service.errors import Overloaded, TooManyRequests

T = TypeVar("T")

GROUP = "replicas"
# Units of a job's finishing step carry this index.
FINISH = -1
URGENT, BULK = "urgent", "bulk"
UNAVAILABLE = "the shared work queue (Redis) cannot be reached; retry later"


class QueueUnavailable(Overloaded):
    """Redis cannot be reached: scene jobs cannot be queued now (503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(UNAVAILABLE, retry_after_s=10, reason=reason)


async def _call(awaitable: Awaitable[T]) -> T:
    """Await a Redis call; a lost connection becomes :class:`QueueUnavailable`."""
    try:
        return await awaitable
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(reason(exc)) from None


def reason(exc: BaseException) -> str:
    """What went wrong with Redis, in one short line."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@dataclass(frozen=True)
class Delivery:
    """One entry given to this replica: a unit of a job, or its finishing step (``FINISH``)."""

    stream: str
    entry: str
    job_id: str
    unit: int
    claimed: bool = False


@dataclass(frozen=True)
class Progress:
    """A job's units as the queue knows them, across replicas."""

    total: int
    done: int
    started: float | None
    workers: dict[str, int]
    stop: str | None


class RedisQueue:
    """Units of scene jobs in Redis Streams, one consumer per replica.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS).
        consumer: this replica's name in the consumer group (unique, e.g. host and pid).
        claim_after_s: a unit pending this long without a touch is taken by another replica.
        prefix: the prefix of every key (several deployments may share one Redis).
        ttl_s: how long a job's keys are kept (its job's TTL).
    """

    def __init__(
        self,
        url: str,
        consumer: str,
        claim_after_s: float,
        prefix: str = "attnserve:",
        ttl_s: float = 86400.0,
    ) -> None:
        # Typed loosely: redis-py's annotations cover its sync and async clients at once.
        self.client: Any = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
        )
        self.consumer = consumer
        self.claim_after_ms = max(1, int(claim_after_s * 1000))
        self.prefix = prefix
        self.ttl_s = max(1, int(ttl_s))
        self.streams = {URGENT: f"{prefix}units:{URGENT}", BULK: f"{prefix}units:{BULK}"}

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.prefix}{kind}:{job_id}"

    async def close(self) -> None:
        """Close the connections."""
        await self.client.aclose()

    async def ping(self) -> None:
        """Reach Redis and make sure the consumer group exists; QueueUnavailable if it cannot."""
        await _call(self.client.ping())
        await self.ensure_group()

    async def epoch(self) -> str:
        """An id of the data this Redis holds: a new one once it has come back empty."""
        key = f"{self.prefix}epoch"
        await _call(self.client.set(key, uuid.uuid4().hex, nx=True))
        return str(await _call(self.client.get(key)))

    async def ensure_group(self) -> None:
        """Create the streams' consumer group (once; Redis may have restarted empty)."""
        for stream in self.streams.values():
            try:
                await _call(self.client.xgroup_create(stream, GROUP, id="0", mkstream=True))
            except QueueUnavailable as exc:
                if "BUSYGROUP" not in str(exc.detail.get("reason", "")):
                    raise

    # Submitting.

    async def admit(self, job_id: str, owner: str, max_jobs: int) -> None:
        """Count a job against its key's unfinished jobs; TooManyRequests (429) past ``max_jobs``.

        Added first, counted after: two replicas admitting at once may both
        refuse, never both let a key past its limit.
        """
        active = self._key("active", owner)
        job = self._key("job", job_id)
        await _call(self.client.hset(job, "owner", owner))
        await _call(self.client.expire(job, self.ttl_s))
        await _call(self.client.sadd(active, job_id))
        count = int(await _call(self.client.scard(active)))
        if count > max_jobs:
            count = await self._prune(active, job_id)
        if count > max_jobs:
            await _call(self.client.srem(active, job_id))
            raise TooManyRequests(
                f"this API key has {max_jobs} scene jobs queued or running, as many as it may "
                "(ATTNSERVE_QUEUE_MAX_JOBS_PER_KEY); retry once one is done",
                retry_after_s=30,
            )
        await _call(self.client.expire(active, self.ttl_s))

    async def _prune(self, active: str, keep: str) -> int:
        """Drop jobs Redis no longer knows (expired, lost) from a key's set; its new count."""
        members = await _call(self.client.smembers(active))
        for job_id in members:
            if job_id != keep and not await _call(self.client.exists(self._key("job", job_id))):
                await _call(self.client.srem(active, job_id))
        return int(await _call(self.client.scard(active)))

    async def release(self, job_id: str, owner: str) -> None:
        """A job is over (done, failed, cancelled): it no longer counts against its key."""
        await _call(self.client.srem(self._key("active", owner), job_id))

    async def queued(self) -> int:
        """Units in the streams: waiting or in flight (entries go once acknowledged)."""
        total = 0
        for stream in self.streams.values():
            total += int(await _call(self.client.xlen(stream)))
        return total

    async def waiting(self) -> int:
        """Units no replica has taken yet."""
        pending = 0
        for stream in self.streams.values():
            try:
                summary = await self.client.xpending(stream, GROUP)
            except ResponseError:
                continue  # no group yet: nothing taken
            except (RedisError, OSError) as exc:
                raise QueueUnavailable(reason(exc)) from None
            pending += int(summary.get("pending", 0))
        return max(0, await self.queued() - pending)

    async def seed(
        self,
        job_id: str,
        owner: str,
        units: Sequence[int],
        total: int,
        urgent: bool,
        max_units: int,
    ) -> bool:
        """Queue a job's units (those not done yet) once; False if the job was queued already.

        ``HSETNX`` on the job's key makes one replica the one that queues it,
        however many find it unqueued at once (a submit, and every replica's
        look through the store after Redis came back empty).
        """
        key = self._key("job", job_id)
        if max_units and await self.queued() + len(units) > max_units:
            raise Overloaded(
                f"the shared queue holds {max_units} units or more (ATTNSERVE_QUEUE_MAX_UNITS); "
                "retry later",
                retry_after_s=30,
            )
        if not await _call(self.client.hsetnx(key, "total", total)):
            return False
        done = [i for i in range(total) if i not in set(units)]
        stream = self.streams[URGENT if urgent else BULK]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"owner": owner, "stream": stream, "queued": time.time()})
            pipe.expire(key, self.ttl_s)
            if done:
                pipe.sadd(self._key("done", job_id), *done)
                pipe.expire(self._key("done", job_id), self.ttl_s)
            for unit in units:
                pipe.xadd(stream, {"job": job_id, "unit": unit})
            await _call(pipe.execute())
        if not units:
            await self.queue_finish(job_id)
        return True

    async def known(self, job_id: str) -> bool:
        """Whether Redis holds the job's units (it was queued, and Redis kept it)."""
        return bool(await _call(self.client.hexists(self._key("job", job_id), "total")))

    # Working.

    async def take(self, block_ms: int) -> Delivery | None:
        """The next entry for this replica: a dead consumer's first, then urgent, then bulk."""
        for name in (URGENT, BULK):
            got = await self._claim(name)
            if got is not None:
                return got
        for name in (URGENT, BULK):
            got = await self._read({self.streams[name]: ">"}, None)
            if got is not None:
                return got
        return await self._read(dict.fromkeys(self.streams.values(), ">"), block_ms)

    async def _grouped(self, call: Awaitable[Any]) -> Any:
        """A call on the consumer group; None (the group made again) if Redis lost it."""
        try:
            return await call
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                await self.ensure_group()
                return None
            raise QueueUnavailable(reason(exc)) from None
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(reason(exc)) from None

    async def _claim(self, name: str) -> Delivery | None:
        stream = self.streams[name]
        answer = await self._grouped(
            self.client.xautoclaim(
                stream, GROUP, self.consumer, self.claim_after_ms, "0-0", count=1
            )
        )
        entries = answer[1] if answer else []
        for entry, fields in entries:
            if fields:  # a deleted entry comes back empty
                return self._delivery(stream, entry, fields, claimed=True)
        return None

    async def _read(self, streams: dict[str, str], block_ms: int | None) -> Delivery | None:
        answer = await self._grouped(
            self.client.xreadgroup(GROUP, self.consumer, streams, count=1, block=block_ms)
        )
        found = [
            self._delivery(stream, entry, fields)
            for stream, entries in answer or []
            for entry, fields in entries
        ]
        # A blocking read on both streams may return one of each: the other goes
        # back to the group at once (claimable now), not after claim_after_s.
        for extra in found[1:]:
            await self.hand_back(extra)
        return found[0] if found else None

    @staticmethod
    def _delivery(
        stream: str, entry: str, fields: dict[str, str], claimed: bool = False
    ) -> Delivery:
        return Delivery(stream, entry, fields["job"], int(fields["unit"]), claimed)

    async def touch(self, delivery: Delivery) -> None:
        """Reset the idle time of an entry still being worked on (so no one claims it)."""
        await _call(
            self.client.xclaim(
                delivery.stream, GROUP, self.consumer, 0, [delivery.entry], justid=True
            )
        )

    async def hand_back(self, delivery: Delivery) -> None:
        """Leave an entry for another replica now (this one stops): it is claimable at once."""
        await _call(
            self.client.xclaim(
                delivery.stream,
                GROUP,
                self.consumer,
                0,
                [delivery.entry],
                idle=self.claim_after_ms,
                justid=True,
            )
        )

    async def ack(self, delivery: Delivery) -> None:
        """The entry is dealt with: acknowledged and deleted."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(delivery.stream, GROUP, delivery.entry)
            pipe.xdel(delivery.stream, delivery.entry)
            await _call(pipe.execute())

    async def attempt(self, job_id: str, unit: int) -> int:
        """Count one more run of a unit; how many there have been."""
        key = self._key("attempts", job_id)
        count = int(await _call(self.client.hincrby(key, str(unit), 1)))
        await _call(self.client.expire(key, self.ttl_s))
        if unit != FINISH:
            await _call(self.client.hsetnx(self._key("job", job_id), "started", time.time()))
        return count

    async def forgive(self, job_id: str, unit: int) -> None:
        """Take back the count of a run that ended cleanly (handed back on shutdown)."""
        await _call(self.client.hincrby(self._key("attempts", job_id), str(unit), -1))

    async def unit_done(self, job_id: str, unit: int) -> bool:
        """Record a unit's partial as stored; True when it completes the job's set.

        The first replica to finish a unit is credited with it. The one that
        completes the set queues the finishing step (once: ``HSETNX``).
        """
        done_key = self._key("done", job_id)
        added = await _call(self.client.sadd(done_key, unit))
        await _call(self.client.expire(done_key, self.ttl_s))
        if added:
            workers = self._key("workers", job_id)
            await _call(self.client.hincrby(workers, self.consumer, 1))
            await _call(self.client.expire(workers, self.ttl_s))
        total = await _call(self.client.hget(self._key("job", job_id), "total"))
        count = int(await _call(self.client.scard(done_key)))
        if total is None or count < int(total):
            return False
        await self.queue_finish(job_id)
        return True

    async def queue_finish(self, job_id: str) -> None:
        """Queue the job's finishing step, once."""
        key = self._key("job", job_id)
        if await _call(self.client.hsetnx(key, "finishing", time.time())):
            await _call(self.client.xadd(self.streams[URGENT], {"job": job_id, "unit": FINISH}))

    # Across replicas.

    async def stop(self, job_id: str, why: str) -> None:
        """Mark a job cancelled or failed: every replica drops its units."""
        await _call(self.client.set(self._key("stop", job_id), why, ex=self.ttl_s))

    async def stopped(self, job_id: str) -> str | None:
        """``cancelled`` or ``failed`` when the job was stopped, else None."""
        value = await _call(self.client.get(self._key("stop", job_id)))
        return str(value) if value is not None else None

    async def progress(self, job_id: str) -> Progress | None:
        """The job's units done, who did them and when they started; None if Redis lacks it."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._key("job", job_id))
            pipe.scard(self._key("done", job_id))
            pipe.hgetall(self._key("workers", job_id))
            pipe.get(self._key("stop", job_id))
            job, done, workers, stop = await _call(pipe.execute())
        if not job or "total" not in job:
            return None
        started = float(job["started"]) if "started" in job else None
        return Progress(
            int(job["total"]), int(done), started, {k: int(v) for k, v in workers.items()}, stop
        )

    async def forget(self, job_id: str) -> None:
        """Remove a finished job's keys (its record in the store says the rest)."""
        kinds = ("done", "workers", "attempts")
        await _call(self.client.delete(*(self._key(k, job_id) for k in kinds)))
