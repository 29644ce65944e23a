"""The Store protocol in Redis (SD_REDIS_URL): every ingress replica talks to Redis directly, so
no single replica holds shared state, a client's rate limit is one bucket whichever replica it
reaches, and jobs, their event logs and the result-cache index survive a restart of the service.
Images go to the configured ImageStore (files or a bucket), not to Redis.

Keys start with `sd:v1:`, the schema version, so an upgrade can tell old records:
  job:<id>           hash: status, progress, parameters, result, error, webhook, timestamps
  job:<id>:events    stream: the job's ordered event log (`GET /v1/jobs/{id}/events`)
  job:<id>:preview   the latest step preview only (the log keeps its place, not its pixels)
  job:<id>:checkpoints  hash: each image's latest denoising checkpoint, with the weights'
                     fingerprint (deleted when the job finishes)
  jobs:active        sorted set of queued and running jobs by creation time (SD_MAX_JOBS)
  result:<key>       a fully determined request's digests and seeds (SD_IMAGE_RETENTION_S)
  bucket:<client>    a rate-limit token bucket, on Redis's clock
  feedback           list of feedback rows (JSON), the newest SD_MAX_FEEDBACK
Finished jobs expire after SD_JOB_TTL_S.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from serving.dataplane.checkpoints import Checkpoint
from serving.dataplane.images import ImageStore, image_store
from serving.dataplane.jobs import (
    FINAL_EVENT,
    JobEvent,
    JobEventKind,
    JobProgress,
    JobResult,
    JobStatus,
    JobView,
)
from serving.dataplane.results import CachedResult, StoredImage
from serving.dataplane.store import ResultHit, images_of, keep_images
from serving.errors import ErrorDetail, QueueFull, StoreUnavailable
from serving.settings import Settings

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

SCHEMA = "sd:v1"
HEARTBEAT_S = 15.0
FINAL_KINDS = frozenset(FINAL_EVENT.values())

# One token bucket, atomically, on Redis's clock (replicas' clocks need not agree).
TAKE_TOKEN = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


# One event appended atomically: its index, its place in the stream and, for progress, the
# job's step count and the queued → running change, so concurrent reports (the images of one
# job report their steps side by side) can never interleave out of order.
# KEYS: the job's hash, its event stream, its preview key.
# ARGV: kind, data (a JSON object), preview (a JSON string, or ''), steps the event advances the
# job by (a progress event: 1, or more for the first step after a resume; else 0), now, touch
# ('1'/'0': whether updated_at moves).
APPEND_EVENT = """
local function add(kind, data)
  local index = redis.call('HINCRBY', KEYS[1], 'events', 1) - 1
  local event = '{"index":' .. index .. ',"kind":"' .. kind .. '","data":' .. data .. '}'
  redis.call('XADD', KEYS[2], '*', 'event', event)
  return index
end
local function with(data, fields)
  if data == '{}' then return '{' .. fields .. '}' end
  return '{' .. fields .. ',' .. string.sub(data, 2)
end
local data = ARGV[2]
if tonumber(ARGV[4]) > 0 then
  if redis.call('HGET', KEYS[1], 'status') == 'queued' then
    redis.call('HSET', KEYS[1], 'status', 'running')
    add('status', '{"status":"running"}')
  end
  local done = redis.call('HINCRBY', KEYS[1], 'steps_done', ARGV[4])
  local total = redis.call('HGET', KEYS[1], 'steps_total')
  data = with(data, '"steps_done":' .. done .. ',"steps_total":' .. total)
end
if ARGV[3] ~= '' then data = with(data, '"preview":true') end
local index = add(ARGV[1], data)
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[3], '{"index":' .. index .. ',"preview":' .. ARGV[3] .. '}')
end
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'updated_at', ARGV[5]) end
return index
"""


@contextlib.contextmanager
def _unavailable_on_redis_error() -> Iterator[None]:
    try:
        yield
    except RedisError as error:
        raise StoreUnavailable(
            f"the shared store (Redis) is unreachable ({type(error).__name__}); retry"
        ) from error


def _reachable(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """A job operation whose Redis errors become StoreUnavailable."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _unavailable_on_redis_error():
            return await method(*args, **kwargs)

    return wrapper


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class RedisStore:
    def __init__(
        self,
        redis: Redis,
        images: ImageStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Any: redis-py's types cannot tell that decode_responses=True answers str, not bytes.
        self._redis: Any = redis
        self._images = images
        self._max_jobs = settings.max_jobs
        self._job_ttl_s = settings.job_ttl_s
        self._retention_s = settings.image_retention_s
        self._settings = settings
        self._clock = clock
        self.heartbeat_s = HEARTBEAT_S
        self._take_token = redis.register_script(TAKE_TOKEN)
        self._append_event = redis.register_script(APPEND_EVENT)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStore:
        if settings.redis_url is None:
            raise ValueError("SD_REDIS_URL is not set")
        redis = Redis.from_url(
            settings.redis_url.get_secret_value(),
            decode_responses=True,
            # Above the longest blocking read (the events' heartbeat); redis-py's default is 5 s.
            socket_timeout=HEARTBEAT_S + 10,
            health_check_interval=30,
        )
        return cls(redis, image_store(settings, shared=True), settings)

    # -- images and the result cache
    async def get_image(self, digest: str) -> StoredImage | None:
        return await self._images.get(digest)

    async def lookup_result(self, key: str) -> ResultHit | None:
        try:
            found = await self._redis.get(f"{SCHEMA}:result:{key}")
        except RedisError:  # Redis away: a miss, the request renders
            logger.warning("the result cache is unreachable; rendering", exc_info=True)
            return None
        if found is None:
            return None
        cached = json.loads(found)
        return await images_of(self._images, CachedResult(cached["digests"], cached["seeds"]))

    async def keep(self, images: list[StoredImage], key: str | None, seeds: list[int]) -> list[str]:
        digests = await keep_images(self._images, images)
        if key is not None:
            entry = _json({"digests": digests, "seeds": seeds})
            try:
                await self._redis.set(f"{SCHEMA}:result:{key}", entry, ex=int(self._retention_s))
            except RedisError:  # the images are stored; only the cache entry is lost
                logger.warning("the result cache is unreachable; not remembered", exc_info=True)
        return digests

    # -- feedback from production
    @_reachable
    async def add_feedback(self, row: dict[str, Any]) -> None:
        key = f"{SCHEMA}:feedback"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, _json(row))
            pipe.ltrim(key, -self._settings.max_feedback, -1)
            await pipe.execute()

    @_reachable
    async def feedback(self, offset: int, limit: int) -> list[dict[str, Any]]:
        rows = await self._redis.lrange(f"{SCHEMA}:feedback", offset, offset + limit - 1)
        return [json.loads(row) for row in rows]

    # -- async jobs
    @_reachable
    async def create_job(
        self, job_id: str, parameters: dict[str, Any], steps_total: int, webhook_url: str | None
    ) -> JobView:
        now = self._clock()
        active = f"{SCHEMA}:jobs:active"
        # A job its replica never finished (it crashed) stops counting after the job TTL.
        await self._redis.zremrangebyscore(active, "-inf", now - self._job_ttl_s)
        if await self._redis.zcard(active) >= self._max_jobs:
            raise QueueFull(f"{self._max_jobs} jobs are queued or running; retry later")
        fields = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "steps_done": 0,
            "steps_total": steps_total,
            "parameters": _json(parameters),
            "webhook_url": webhook_url or "",
            "cancel": 0,
            "events": 0,
            "created_at": now,
            "updated_at": now,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._job(job_id), mapping=fields)
            pipe.zadd(active, {job_id: now})
            await pipe.execute()
        await self._append(job_id, JobEventKind.STATUS, {"status": JobStatus.QUEUED.value})
        view = await self.get_job(job_id)
        assert view is not None
        return view

    @_reachable
    async def get_job(self, job_id: str) -> JobView | None:
        fields = await self._redis.hgetall(self._job(job_id))
        return _view(fields) if fields else None

    @_reachable
    async def report_job(
        self, job_id: str, kind: JobEventKind, data: dict[str, Any], advance: int = 1
    ) -> bool:
        status, cancel = await self._redis.hmget(self._job(job_id), ["status", "cancel"])
        if status is None or JobStatus(status).finished:
            return True
        await self._append(job_id, kind, data, advance=advance)  # progress counts its steps
        return cancel == "1"

    @_reachable
    async def finish_job(
        self,
        job_id: str,
        status: JobStatus,
        result: JobResult | None = None,
        error: ErrorDetail | None = None,
    ) -> JobView | None:
        key = self._job(job_id)
        if not await self._redis.exists(key):
            return None
        # The first finisher wins (a cancellation racing the result, say); the rest read it.
        if not await self._redis.hsetnx(key, "finished", status.value):
            return await self.get_job(job_id)
        update: dict[str, Any] = {"status": status.value, "updated_at": self._clock()}
        if result is not None:
            update["result"] = result.model_dump_json()
        if error is not None:
            update["error"] = error.model_dump_json()
        if status is JobStatus.SUCCEEDED:
            update["steps_done"] = await self._redis.hget(key, "steps_total") or 0
        await self._redis.hset(key, mapping=update)
        final = await self.get_job(job_id)
        assert final is not None
        # The final view exactly, so its updated_at is not moved again.
        await self._append(job_id, FINAL_EVENT[status], final.model_dump(mode="json"), touch=False)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(f"{SCHEMA}:jobs:active", job_id)
            pipe.delete(f"{key}:checkpoints")
            for name in (key, f"{key}:events", f"{key}:preview"):
                pipe.expire(name, int(self._job_ttl_s))
            await pipe.execute()
        return final

    @_reachable
    async def record_webhook(self, job_id: str, delivery: dict[str, Any]) -> None:
        if await self._redis.exists(self._job(job_id)):
            await self._redis.hset(self._job(job_id), "webhook", _json(delivery))

    @_reachable
    async def cancel_job(self, job_id: str) -> JobView | None:
        view = await self.get_job(job_id)
        if view is not None and not view.status.finished:
            await self._redis.hset(self._job(job_id), "cancel", 1)
        return view

    async def job_events(
        self, job_id: str, after: int = -1
    ) -> AsyncGenerator[JobEvent | None, None]:
        """The stream read from its start (events at or before `after` skipped), then live with
        a blocking read; None after `heartbeat_s` of silence."""
        key = self._job(job_id)
        with _unavailable_on_redis_error():
            if not await self._redis.exists(key):
                return
        position = "0-0"
        while True:
            with _unavailable_on_redis_error():
                answer = await self._redis.xread(
                    {f"{key}:events": position},
                    block=max(1, int(self.heartbeat_s * 1000)),
                    count=100,
                )
            if not answer:
                if not await self._redis.exists(key):  # expired while we waited
                    return
                yield None
                continue
            for entry_id, fields in answer[0][1]:
                position = entry_id
                event = await self._event(job_id, json.loads(fields["event"]))
                if event.index > after:
                    yield event
                if event.kind in FINAL_KINDS:
                    return

    @_reachable
    async def begin_attempt(self, job_id: str) -> Attempt:
        """A worker starts the job. A second attempt (the replica running the first stopped)
        starts its progress over; its images resume from their checkpoints."""
        key = self._job(job_id)
        attempt = await self._redis.hincrby(key, "attempts", 1)
        steps_before = int(await self._redis.hget(key, "steps_done") or 0)
        if attempt > 1:
            await self._redis.hset(key, mapping={"status": JobStatus.QUEUED.value, "steps_done": 0})
            await self._append(
                job_id, JobEventKind.STATUS, {"status": "queued", "attempt": attempt}
            )
        cancel_requested = await self._redis.hget(key, "cancel") == "1"
        return Attempt(attempt, cancel_requested, steps_before)

    @_reachable
    async def record_resume(self, job_id: str, resumed_steps: int) -> int:
        """A taken-over attempt resumes `resumed_steps` steps in all: the attempts lost in a
        row without getting further than that (0 when it got further than the last one)."""
        key = self._job(job_id)
        mark = int(await self._redis.hget(key, "resumed_mark") or 0)
        if resumed_steps > mark:
            await self._redis.hset(key, mapping={"resumed_mark": resumed_steps, "stalled": 0})
            return 0
        return int(await self._redis.hincrby(key, "stalled", 1))

    def checkpoints(self, job_id: str, weights: str) -> RedisCheckpoints:
        """The job's denoising checkpoints, for the model whose weights' fingerprint is
        `weights`."""
        return RedisCheckpoints(
            self._redis, f"{self._job(job_id)}:checkpoints", weights, self._settings
        )

    # -- rate limits
    async def take_token(self, client: str, per_minute: float, burst: int) -> float:
        keys = [f"{SCHEMA}:bucket:{client}"]
        try:
            return float(await self._take_token(keys=keys, args=[per_minute / 60.0, burst]))
        except RedisError:  # fail open: a store outage must not refuse every request
            logger.warning("the rate-limit buckets are unreachable; admitting", exc_info=True)
            return 0.0

    async def ready(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    @property
    def redis(self) -> Any:
        return self._redis

    async def close(self) -> None:
        await self._redis.aclose()

    # -- internals
    def _job(self, job_id: str) -> str:
        return f"{SCHEMA}:job:{job_id}"

    async def _append(
        self,
        job_id: str,
        kind: JobEventKind,
        data: dict[str, Any],
        touch: bool = True,
        advance: int = 1,
    ) -> None:
        """Only the latest preview is kept (its event remembers its place); a progress event
        carries the job's step count."""
        key = self._job(job_id)
        progress = kind is JobEventKind.PROGRESS
        preview = data.get("preview") if progress else None
        fields = {k: v for k, v in data.items() if k != "preview"} if progress else data
        arguments = [
            kind.value,
            _json(fields),
            "" if preview is None else _json(preview),
            advance if progress else 0,
            self._clock(),
            int(touch),
        ]
        keys = [key, f"{key}:events", f"{key}:preview"]
        await self._append_event(keys=keys, args=arguments)

    async def _event(self, job_id: str, event: dict[str, Any]) -> JobEvent:
        data = event["data"]
        kind = JobEventKind(event["kind"])
        if kind is JobEventKind.PROGRESS and data.pop("preview", None):
            latest = await self._redis.get(f"{self._job(job_id)}:preview")
            if latest is not None and json.loads(latest)["index"] == event["index"]:
                data["preview"] = json.loads(latest)["preview"]
        return JobEvent(event["index"], kind, data)


@dataclass(frozen=True)
class Attempt:
    number: int  # 1 for the first run, 2 once a worker takes over a job its replica dropped
    cancel_requested: bool
    steps_before: int  # the steps the job had reported when this attempt began


class RedisCheckpoints:
    """A job's checkpoints in one hash, image index → the step, the weights' fingerprint and the
    engine's bytes (base64: the client decodes every answer as text). Read once per attempt."""

    def __init__(self, redis: Redis, key: str, weights: str, settings: Settings) -> None:
        self._redis = redis
        self._key = key
        self._weights = weights
        self._every = settings.job_checkpoint_steps
        self._ttl_s = int(settings.job_ttl_s)
        self._loaded: dict[int, Checkpoint] | None = None

    @property
    def every(self) -> int:
        return self._every

    async def load(self) -> dict[int, Checkpoint]:
        if self._loaded is None:
            self._loaded = {}
            for image_index, value in (await self._redis.hgetall(self._key)).items():
                record = json.loads(value)
                if record["weights"] != self._weights:
                    logger.warning(
                        "%s: image %s's checkpoint was made with other weights; starting it over",
                        self._key,
                        image_index,
                    )
                    continue
                state = base64.b64decode(record["state"])
                self._loaded[int(image_index)] = Checkpoint(record["step"], state)
        return self._loaded

    async def save(self, image_index: int, checkpoint: Checkpoint) -> None:
        record = {
            "step": checkpoint.step,
            "weights": self._weights,
            "state": base64.b64encode(checkpoint.state).decode(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key, str(image_index), _json(record))
            pipe.expire(self._key, self._ttl_s)  # a job nobody finishes leaves nothing behind
            await pipe.execute()


def _view(fields: dict[str, str]) -> JobView:
    return JobView(
        id=fields["id"],
        status=JobStatus(fields["status"]),
        progress=JobProgress.of(int(fields["steps_done"]), int(fields["steps_total"])),
        parameters=json.loads(fields["parameters"]),
        result=JobResult.model_validate_json(fields["result"]) if "result" in fields else None,
        error=ErrorDetail.model_validate_json(fields["error"]) if "error" in fields else None,
        webhook=json.loads(fields["webhook"]) if "webhook" in fields else None,
        created_at=float(fields["created_at"]),
        updated_at=float(fields["updated_at"]),
    )
