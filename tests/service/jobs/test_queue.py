"""The shared work queue against a real redis-server: delivery, priority, claiming, quotas."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from service.errors import Overloaded, TooManyRequests
from service.jobs.queue import FINISH, QueueUnavailable, RedisQueue
from tests.helpers.redis_server import RedisServer

JOB_A = "a" * 22
JOB_B = "b" * 22


def _run(redis: RedisServer, body: Callable[[RedisQueue, RedisQueue], Awaitable[None]]) -> None:
    """Run ``body`` with two replicas' queues (claim after 0.5 s) on ``redis``."""

    async def main() -> None:
        one = RedisQueue(redis.url, "one", claim_after_s=0.5, prefix="t:")
        two = RedisQueue(redis.url, "two", claim_after_s=0.5, prefix="t:")
        try:
            await one.ping()
            await body(one, two)
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_units_go_to_one_replica_each_and_the_last_one_queues_finishing(
    redis_server: RedisServer,
) -> None:
    async def body(one: RedisQueue, two: RedisQueue) -> None:
        assert await one.seed(JOB_A, "k", [0, 1], 2, urgent=False, max_units=0)
        assert not await two.seed(JOB_A, "k", [0, 1], 2, urgent=False, max_units=0)  # once
        first, second = await one.take(100), await two.take(100)
        assert first is not None
        assert second is not None
        assert {first.unit, second.unit} == {0, 1}
        assert await one.take(100) is None  # both taken, none twice
        assert await one.waiting() == 0
        assert await one.queued() == 2
        await one.attempt(JOB_A, first.unit)
        assert not await one.unit_done(JOB_A, first.unit)
        await one.ack(first)
        assert await two.unit_done(JOB_A, second.unit)
        assert await two.unit_done(JOB_A, second.unit)  # a unit run twice counts once
        await two.ack(second)
        finish = await one.take(100)
        assert finish is not None
        assert finish.unit == FINISH
        assert await two.take(100) is None  # the finishing step is queued once
        progress = await one.progress(JOB_A)
        assert progress is not None
        assert (progress.total, progress.done) == (2, 2)
        assert progress.workers == {"one": 1, "two": 1}
        assert progress.started is not None

    _run(redis_server, body)


def test_small_jobs_go_before_a_large_one_queued_earlier(redis_server: RedisServer) -> None:
    async def body(one: RedisQueue, two: RedisQueue) -> None:
        await one.seed(JOB_A, "k", list(range(50)), 50, urgent=False, max_units=0)
        await one.seed(JOB_B, "k", [0], 1, urgent=True, max_units=0)
        got = await two.take(100)
        assert got is not None
        assert got.job_id == JOB_B

    _run(redis_server, body)


def test_a_quiet_replicas_unit_is_claimed_and_a_busy_ones_is_not(
    redis_server: RedisServer,
) -> None:
    async def body(one: RedisQueue, two: RedisQueue) -> None:
        await one.seed(JOB_A, "k", [0, 1], 2, urgent=False, max_units=0)
        busy, quiet = await one.take(100), await one.take(100)
        assert busy is not None
        assert quiet is not None
        for _ in range(4):  # the busy one is touched while it runs
            await asyncio.sleep(0.2)
            await one.touch(busy)
        claimed = await two.take(100)
        assert claimed is not None
        assert claimed.claimed
        assert claimed.unit == quiet.unit
        assert await two.take(100) is None
        await one.hand_back(busy)  # a replica stopping leaves it to others at once
        handed = await two.take(100)
        assert handed is not None
        assert handed.unit == busy.unit

    _run(redis_server, body)


def test_a_key_past_its_jobs_gets_429_while_another_key_does_not(
    redis_server: RedisServer,
) -> None:
    async def body(one: RedisQueue, two: RedisQueue) -> None:
        for i in range(10):
            await one.admit(f"{i:022d}", "key-a", 10)
        with pytest.raises(TooManyRequests) as refused:
            await one.admit("x" * 22, "key-a", 10)
        assert refused.value.retry_after_s > 0
        await two.admit("y" * 22, "key-b", 10)
        await one.release(f"{0:022d}", "key-a")
        await one.admit("x" * 22, "key-a", 10)  # room again once one is over

    _run(redis_server, body)


def test_the_queue_refuses_units_past_its_cap(redis_server: RedisServer) -> None:
    async def body(one: RedisQueue, two: RedisQueue) -> None:
        await one.seed(JOB_A, "k", [0, 1, 2], 3, urgent=False, max_units=4)
        with pytest.raises(Overloaded, match="QUEUE_MAX_UNITS"):
            await one.seed(JOB_B, "k", [0, 1], 2, urgent=False, max_units=4)
        assert await one.seed(JOB_B, "k", [0], 1, urgent=False, max_units=4)

    _run(redis_server, body)


def test_redis_gone_is_queue_unavailable_and_back_empty_works_again(
    redis_server: RedisServer,
) -> None:
    async def body(one: RedisQueue, two: RedisQueue) -> None:
        await one.seed(JOB_A, "k", [0], 1, urgent=False, max_units=0)
        before = await one.epoch()
        assert await two.epoch() == before  # one Redis, one epoch
        redis_server.stop()
        with pytest.raises(QueueUnavailable) as lost:
            await one.ping()
        assert lost.value.detail["reason"]
        with pytest.raises(QueueUnavailable):
            await one.take(10)
        redis_server.start()
        await one.ping()  # the group is made again on the empty server
        assert await one.epoch() != before  # it came back empty, and says so
        assert not await one.known(JOB_A)
        assert await one.seed(JOB_A, "k", [0], 1, urgent=False, max_units=0)
        got = await two.take(100)
        assert got is not None
        assert got.job_id == JOB_A

    _run(redis_server, body)
