"""Jobs that outlive the replica that accepted them (with SD_REDIS_URL): a job is queued in a Redis
stream, and the worker of any ingress replica takes it through the stream's consumer group.

At least once, idempotent by job id: a worker holds a job's entry on a lease it renews while the
job runs (SD_JOB_LEASE_S). When its replica dies the lease lapses and another worker reclaims the
entry (XAUTOCLAIM) and runs the job again from the start, as its next attempt; a job already
finished is only acknowledged. After SD_JOB_MAX_ATTEMPTS the job fails with the reason and its
entry is kept in the dead-letter stream for inspection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from serving.dataplane.redis_store import SCHEMA, RedisStore

QUEUE = f"{SCHEMA}:jobs:queue"
DEAD_LETTERS = f"{SCHEMA}:jobs:dead"
GROUP = "workers"
DEAD_LETTERS_KEPT = 10_000


@dataclass(frozen=True)
class QueuedJob:
    entry_id: str
    job_id: str
    work: dict[str, Any]  # what the job needs to run: its prepared request, preview, webhook


class RedisJobQueue:
    def __init__(self, store: RedisStore, consumer: str, lease_s: float) -> None:
        self._redis = store.redis
        self.store = store
        self.consumer = consumer  # this worker's name in the group (one per replica)
        self.lease_s = lease_s
        self._group_ready = False

    async def put(self, job_id: str, work: dict[str, Any]) -> None:
        await self._ensure_group()
        await self._redis.xadd(QUEUE, {"job": job_id, "work": json.dumps(work)})

    async def take(self, count: int, block_s: float) -> list[QueuedJob]:
        """Up to `count` jobs for this worker: entries whose lease lapsed first, then new ones
        (waiting up to `block_s` for one)."""
        await self._ensure_group()
        lease_ms = int(self.lease_s * 1000)
        _, reclaimed, _ = await self._redis.xautoclaim(
            QUEUE, GROUP, self.consumer, min_idle_time=lease_ms, start_id="0-0", count=count
        )
        entries = list(reclaimed)
        if len(entries) < count:
            answer = await self._redis.xreadgroup(
                GROUP,
                self.consumer,
                {QUEUE: ">"},
                count=count - len(entries),
                block=max(1, int(block_s * 1000)),
            )
            entries += answer[0][1] if answer else []
        return [
            QueuedJob(entry_id, fields["job"], json.loads(fields["work"]))
            for entry_id, fields in entries
            if fields  # an entry deleted while pending comes back empty
        ]

    async def length(self) -> int:
        """Jobs waiting or running (an entry leaves the stream when its job is done)."""
        return int(await self._redis.xlen(QUEUE))

    async def oldest_waiting_s(self) -> float:
        """How long the oldest job no worker has taken yet has waited (0: none): the first
        entry after the group's last delivered one; its id is its enqueue time in ms."""
        await self._ensure_group()
        groups = await self._redis.xinfo_groups(QUEUE)
        delivered = next(g["last-delivered-id"] for g in groups if g["name"] == GROUP)
        waiting = await self._redis.xrange(QUEUE, min=f"({delivered}", count=1)
        if not waiting:
            return 0.0
        seconds, microseconds = await self._redis.time()
        queued_ms = int(waiting[0][0].split("-")[0])
        return max(0.0, seconds + microseconds / 1e6 - queued_ms / 1000)

    async def renew(self, entry_id: str) -> None:
        """Restart the lease: the entry's idle time goes back to 0."""
        await self._redis.xclaim(QUEUE, GROUP, self.consumer, 0, [entry_id], justid=True)

    async def done(self, entry_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(QUEUE, GROUP, entry_id)
            pipe.xdel(QUEUE, entry_id)
            await pipe.execute()

    async def bury(self, job: QueuedJob, reason: str) -> None:
        """Keep the job's entry in the dead-letter stream, then take it off the queue."""
        record = {"job": job.job_id, "work": json.dumps(job.work), "reason": reason}
        await self._redis.xadd(DEAD_LETTERS, record, maxlen=DEAD_LETTERS_KEPT, approximate=True)
        await self.done(job.entry_id)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:  # from the stream's start: entries queued before any worker existed count too
            await self._redis.xgroup_create(QUEUE, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True
