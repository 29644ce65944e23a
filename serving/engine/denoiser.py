"""Step-level continuous batching for the denoiser: plain torch, no Ray inside.

Every request owns its scheduler, generator and latents. One iteration takes the active requests
that share a latent shape, runs ONE batched denoiser forward with a per-sample timestep tensor
(classifier-free guidance doubles a request's rows), then steps each request's scheduler on its
own slice. Requests join at any step boundary and leave when done or cancelled, so a short job
never waits for a long one to finish. Conditioning travels as per-row tensors by name, so one
batch mixes samplers, step counts, guidance on and off and (SDXL) size conditioning. The
arithmetic per request is the family's diffusers pipeline's (StableDiffusionPipeline,
StableDiffusionXLPipeline, LatentConsistencyModelPipeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from serving.dataplane.clients import PRIORITIES
from serving.dataplane.stages import DenoiseJob, DenoiseResult, ImageLatents, StepProgress
from serving.engine import checkpoint
from serving.engine.compiled import (
    EAGER,
    BucketedDenoise,
    Denoise,
    FastPath,
    prepare_unet,
    warm_up_example,
)
from serving.engine.fair_queue import FairQueue
from serving.engine.lora import RowAdapters
from serving.engine.preview import latent_preview
from serving.engine.schedulers import SchedulerFactory, image_start_index, step_kwargs
from serving.errors import InvalidArgument, QueueFull
from serving.metrics import UNetMetrics
from serving.models import loader
from serving.models.device import Placement
from serving.models.loras import LoraError

logger = logging.getLogger(__name__)

# Called on the engine thread after each of a job's steps: (steps done, total steps, latents,
# the denoising state as a checkpoint when one is due, else None).
StepObserver = Callable[[int, int, torch.Tensor, bytes | None], None]


@dataclass
class Ticket:
    """The caller's handle on a submitted job: a future for the final latents, and progress."""

    id: int
    future: Future[np.ndarray] = field(default_factory=Future)
    on_step: StepObserver | None = None
    steps_done: int = 0
    total_steps: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None

    def cancel(self) -> bool:
        """Ask the engine to drop this job; its batch slot is freed at the next step boundary."""
        return self.future.cancel()


class UNetCall:
    """The only UNet-shaped code: the per-row conditioning, by name, onto a UNet2DConditionModel's
    arguments. Another denoiser (a transformer) gets a call of its own with the same shape."""

    ADDED = ("text_embeds", "time_ids")  # SDXL's added conditioning

    def __init__(self, unet: UNet2DConditionModel, module: torch.nn.Module | None = None) -> None:
        self._unet = unet if module is None else module  # what runs: the UNet or its compiled form
        self.latent_channels = int(unet.config.out_channels)
        # An inpainting UNet takes 9: the latents, the mask and the masked picture's latents.
        self.input_channels = int(unet.config.in_channels)
        # LCM-style models take guidance as an embedding (timestep_cond), never as CFG rows.
        self.guidance_embedding_dim: int | None = unet.config.time_cond_proj_dim

    def __call__(
        self, sample: torch.Tensor, timesteps: torch.Tensor, conditioning: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        added = {key: conditioning[key] for key in self.ADDED if key in conditioning}
        output: torch.Tensor = self._unet(
            sample,
            timesteps,
            encoder_hidden_states=conditioning["encoder_hidden_states"],
            timestep_cond=conditioning.get("timestep_cond"),
            added_cond_kwargs=added or None,
            return_dict=False,
        )[0]
        return output


def guidance_embedding(guidance_scale: float, dim: int) -> torch.Tensor:
    """LatentConsistencyModelPipeline's embedding of w = guidance_scale - 1, shape [1, dim]."""
    w = torch.tensor([guidance_scale - 1.0])
    embedding: torch.Tensor = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, w, embedding_dim=dim
    )
    return embedding


@dataclass(frozen=True)
class _Inpaint:
    """What an inpainting request adds to its latents: the mask [1, 1, h, w], the masked
    picture's latents; for a plain UNet also the picture's latents and the noise, to put the
    kept area back after every step (StableDiffusionInpaintPipeline's blend)."""

    mask: torch.Tensor
    masked_latents: torch.Tensor
    image_latents: torch.Tensor | None
    noise: torch.Tensor
    as_input: bool  # a 9-channel UNet takes mask and masked latents as input channels


@dataclass
class _Active:
    ticket: Ticket
    job: DenoiseJob
    scheduler: SchedulerMixin
    timesteps: torch.Tensor
    latents: torch.Tensor
    conditioning: dict[str, torch.Tensor]  # [rows, ...] per name
    guided: bool
    generator: torch.Generator
    extra: dict[str, Any]
    index: int = 0
    inpaint: _Inpaint | None = None

    @property
    def done(self) -> bool:
        return self.index == len(self.timesteps)

    def checkpoint_due(self) -> bool:
        every = self.job.checkpoint_every
        return every > 0 and (self.index % every == 0 or self.done)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape)


# The engine promises by the slower of two measures of its saturated pace: the totals of the last
# PACE_WINDOW iterations, several cohorts of a short request, and an average weighted to the
# last few. The window alone weighs the slow iteration that ends one cohort and prepares the
# next (three times the others on a CPU) at what it costs whatever the cohort's phase; the
# recent average alone, read just before that iteration, promised a quarter too little. The
# recent one sees at once a pace that falls as load grows (0.27 s to 0.41 s an iteration on a
# CPU shared with 3x overload's arrivals), where the window lags. make test's overload run: the
# recent average answered 504 for 1.9-8.3 % of the requests it took on, the window alone for up
# to 12.5 %; the slower of the two, none in four runs.
PACE_WINDOW = 32


@dataclass(frozen=True)
class Pace:
    """How fast the engine goes while saturated (a full batch, or requests waiting): UNet work
    (fair-queue cost units) a second, and seconds an iteration (every request in the batch
    advances one step)."""

    work_per_s: float
    iteration_s: float

    def own_seconds(self, job: DenoiseJob) -> float:
        """`job`'s steps in the batch: an iteration each, longer for a step costlier than the
        batch's usual work (a 512² request among 64² ones)."""
        return job.steps * max(self.iteration_s, _step_cost(job) / self.work_per_s)

    @classmethod
    def over(cls, iterations: Iterable[tuple[float, float]]) -> Pace:
        """The pace of a run of saturated iterations, each (work, seconds): their totals, so the
        slow iteration in which a cohort of requests ends and the next is prepared weighs what
        it costs and no more, whatever the phase of the cohort."""
        works, seconds = zip(*iterations, strict=True)
        return cls(sum(works) / sum(seconds), sum(seconds) / len(seconds))

    def averaged_with(self, previous: Pace | None, weight: float = 0.2) -> Pace:
        """This iteration's pace folded into a running average weighted to the last few."""
        if previous is None:
            return self
        return Pace(
            (1 - weight) * previous.work_per_s + weight * self.work_per_s,
            (1 - weight) * previous.iteration_s + weight * self.iteration_s,
        )

    def slower(self, other: Pace) -> Pace:
        """The slower of two measures, as each of its figures."""
        return Pace(
            min(self.work_per_s, other.work_per_s), max(self.iteration_s, other.iteration_s)
        )


class PaceMeter:
    """The saturated pace the engine promises deadlines by: the slower of the totals of its last
    `window` iterations and an average weighted to the last few (why: at PACE_WINDOW)."""

    def __init__(self, window: int = PACE_WINDOW) -> None:
        self._iterations: deque[tuple[float, float]] = deque(maxlen=window)
        self._recent: Pace | None = None
        self.pace: Pace | None = None  # None until an iteration is measured

    def add(self, work: float, seconds: float) -> None:
        """One saturated iteration's work and duration."""
        self._iterations.append((work, seconds))
        self._recent = Pace(work / seconds, seconds).averaged_with(self._recent)
        self.pace = Pace.over(self._iterations).slower(self._recent)


@dataclass(frozen=True)
class EngineStats:
    active: int
    queued: int
    queued_by_priority: dict[str, int] = field(default_factory=dict)
    waiting_clients: int = 0


class ContinuousBatchingEngine:
    def __init__(
        self,
        unet: UNet2DConditionModel,
        schedulers: SchedulerFactory,
        placement: Placement,
        *,
        vae_scale_factor: int,
        max_batch_size: int,
        max_queue: int,
        metrics: UNetMetrics | None = None,
        torch_threads: int | None = None,
        fast_path: FastPath | None = None,
        adapters: Callable[[UNet2DConditionModel], RowAdapters] | None = None,
    ) -> None:
        fast = fast_path or EAGER
        # Adapters are loaded into the UNet itself (PEFT layers), before any compiling.
        self._adapters = None if adapters is None else adapters(unet)
        call = UNetCall(unet, prepare_unet(unet, fast))
        self._denoiser: Denoise = call
        # Compiled graphs are built (and CUDA graphs captured) on the engine thread that runs them.
        self._warm_up: Callable[[], float] | None = None
        if fast.compiled:
            bucketed = BucketedDenoise(call, fast)
            self._denoiser = bucketed
            example = warm_up_example(unet, placement.device, placement.dtype)
            self._warm_up = functools.partial(bucketed.warm_up, example)
        self._compile_seconds = 0.0  # spent compiling at start (0: eager)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._torch_threads = torch_threads  # set on the engine thread when it starts
        self._schedulers = schedulers
        self._placement = placement
        self._scale = vae_scale_factor
        self._max_batch = max_batch_size
        self._max_queue = max_queue
        self._pace_meter = PaceMeter()  # measured while saturated
        self._metrics = metrics
        self._ids = itertools.count()
        self._pending: FairQueue[tuple[DenoiseJob, Ticket]] = FairQueue()
        self._active: list[_Active] = []
        self._wake = threading.Condition()
        self._turn = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    @classmethod
    def load(
        cls,
        source: str,
        placement: Placement,
        *,
        max_batch_size: int,
        max_queue: int,
        metrics: UNetMetrics | None = None,
        torch_threads: int | None = None,
        fast_path: FastPath | None = None,
        adapters: Callable[[UNet2DConditionModel], RowAdapters] | None = None,
    ) -> ContinuousBatchingEngine:
        """The engine over the UNet and scheduler configuration of a diffusers directory."""
        return cls(
            loader.load_unet(source, placement),
            SchedulerFactory(loader.load_scheduler_config(source)),
            placement,
            vae_scale_factor=loader.read_model_info(source).vae_scale_factor,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            metrics=metrics,
            torch_threads=torch_threads,
            fast_path=fast_path,
            adapters=adapters,
        )

    # -- caller side (any thread)

    def submit(self, job: DenoiseJob, on_step: StepObserver | None = None) -> Ticket:
        """Queue a job by its client's fair share; in a full room it pushes out the newest
        request of a heavier client, or is refused (QueueFull)."""
        pushed_out = None
        with self._wake:
            waiting = len(self._pending) + len(self._active)
            if waiting >= self._max_batch + self._max_queue:
                pushed_out = self._pending.push_out(job.client, job.priority_rank, job.weight)
                if pushed_out is None:
                    raise QueueFull(
                        f"the UNet is busy: {waiting} requests in flight, limit "
                        f"{self._max_batch + self._max_queue}; retry later"
                    )
            self._refuse_past_deadline(job, waiting)
            ticket = Ticket(id=next(self._ids), on_step=on_step)
            self._pending.push((job, ticket), job.client, job.priority_rank, job.weight, _cost(job))
            self._wake.notify()
        if pushed_out is not None:
            _fail(
                pushed_out[1],
                QueueFull(
                    "the UNet is busy and this client has more requests waiting than its share; "
                    "retry later"
                ),
            )
            if self._metrics is not None:
                self._metrics.pushed_out.inc()
        self.publish_load()
        return ticket

    def _refuse_past_deadline(self, job: DenoiseJob, waiting: int) -> None:
        """QueueFull when `job` would be done after its deadline, at the pace measured while
        saturated: refused now (Retry-After) rather than answered 504 after waiting for it.

        Done = a slot frees (the running request closest to its end finishes; none to wait for
        when a slot is free and nobody waits ahead), the work the fair queue puts before it
        drains, then its own steps, one per iteration, beside the rest of the batch."""
        pace = self._pace_meter.pace
        if job.finish_by is None or pace is None:
            return
        time_left_s = job.finish_by - time.time()
        active = list(self._active)
        ahead = self._pending.work_ahead(job.client, job.priority_rank)
        first_slot_s = 0.0
        if len(active) >= self._max_batch or ahead > 0:
            closest = min((len(r.timesteps) - r.index for r in active), default=0)
            first_slot_s = closest * pace.iteration_s
        finish_s = first_slot_s + ahead / pace.work_per_s + pace.own_seconds(job)
        if finish_s > DEADLINE_HEADROOM * time_left_s:
            if self._metrics is not None:
                self._metrics.refused_past_deadline.inc()
            raise QueueFull(
                f"the UNet would finish this request in about {finish_s:.0f} s ({waiting} "
                f"requests in flight), after its deadline in {max(time_left_s, 0):.0f} s; "
                "retry later"
            )

    def stats(self) -> EngineStats:
        with self._wake:
            pending = self._pending
            return EngineStats(
                active=len(self._active),
                queued=len(pending),
                queued_by_priority={p.value: pending.depth(p.rank) for p in PRIORITIES},
                waiting_clients=pending.clients(),
            )

    def publish_load(self) -> None:
        """Set the active/queued and compile-time gauges (also on a timer: an idle replica still
        reports them)."""
        if self._metrics is not None:
            stats = self.stats()
            self._metrics.record_load(
                stats.active, stats.queued, stats.queued_by_priority, stats.waiting_clients
            )
            # Ray exports a gauge only while it is being set: republished with the load.
            self._metrics.compile_seconds.set(self._compile_seconds)
        if self._adapters is not None:
            self._adapters.publish()

    def check_health(self) -> None:
        """Raises when the engine thread has died: nothing would ever be denoised again."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the UNet engine thread is not running")

    # -- asyncio callers (the deployment, the in-process stages)

    async def denoise(self, job: DenoiseJob) -> DenoiseResult:
        ticket = self.submit(job)
        try:
            latents = await asyncio.wrap_future(ticket.future)
        finally:
            ticket.cancel()  # a no-op once done; otherwise the caller went away
        return self._result(job, ticket, latents)

    async def denoise_stream(
        self, job: DenoiseJob, preview: bool = False
    ) -> AsyncGenerator[StepProgress | DenoiseResult, None]:
        """A StepProgress after every step, then the DenoiseResult. Closing the stream early
        (the caller was cancelled) frees the batch slot at the next step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StepProgress | None] = asyncio.Queue()

        def on_step(  # engine thread
            done: int, total: int, latents: torch.Tensor, state: bytes | None
        ) -> None:
            image = latent_preview(latents) if preview else None
            event = StepProgress(done, total, image, checkpoint=state)
            loop.call_soon_threadsafe(events.put_nowait, event)

        ticket = self.submit(job, on_step=on_step)
        # After the last step's event (same thread, same order): the end of the stream.
        ticket.future.add_done_callback(
            lambda _: loop.call_soon_threadsafe(events.put_nowait, None)
        )
        try:
            while (event := await events.get()) is not None:
                yield event
            latents = ticket.future.result()
        finally:
            ticket.cancel()  # a no-op once done
        yield self._result(job, ticket, latents)

    def _result(self, job: DenoiseJob, ticket: Ticket, latents: np.ndarray) -> DenoiseResult:
        started = ticket.started_at or ticket.submitted_at
        queued_s = started - ticket.submitted_at
        if self._metrics is not None:
            priority = PRIORITIES[job.priority_rank].value
            self._metrics.queue_seconds.observe(queued_s, tags={"priority": priority})
        return DenoiseResult(latents=latents, queued_ms=queued_s * 1000)

    def start(self) -> None:
        """Start the engine thread; returns once it is ready (compiled, when compiling)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="unet-engine", daemon=True)
            self._thread.start()
            self._started.wait()
            if self._start_error is not None:
                self._thread.join()
                self._thread = None
                raise self._start_error

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- engine side (one thread)

    def step(self) -> int:
        """Run one iteration; returns the number of UNet rows computed (0 when idle)."""
        started = time.perf_counter()  # the whole iteration's time measures the rate of work
        self._drop_cancelled()  # first, so a freed slot is refilled in this same iteration
        self._admit()
        if not self._active:
            return 0
        group = self._next_group()
        saturated = len(self._active) >= self._max_batch or bool(self._pending)
        try:
            rows = self._denoise_once(group)
        except Exception as error:  # a failed forward fails its batch, never the engine
            for request in group:
                self._active.remove(request)
                _fail(request.ticket, error)
            return 0
        for request in group:
            if request.done:
                self._active.remove(request)
                _resolve(request.ticket, request.latents[0].float().cpu().numpy())
        if saturated:
            work = sum(_step_cost(request.job) for request in group)
            self._pace_meter.add(work, time.perf_counter() - started)
        if self._metrics is not None:
            self._metrics.batch_size.observe(len(group))
            self._metrics.steps.inc(len(group))
            self.publish_load()
        return rows

    def _run(self) -> None:
        try:
            if self._torch_threads is not None:
                torch.set_num_threads(self._torch_threads)
            if self._warm_up is not None:
                self._compile_seconds = self._warm_up()
        except BaseException as error:  # start() re-raises it in the caller
            self._start_error = error
            return
        finally:
            self._started.set()
        worked = False
        while True:
            with self._wake:
                idle = not (self._pending or self._active or self._stopping)
            if idle and worked:
                give_back_freed_memory()
                worked = False
            with self._wake:
                while not (self._pending or self._active or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    break
            self.step()
            worked = True
        with self._wake:
            abandoned = [ticket for _, ticket in self._pending.drain()]
            abandoned += [request.ticket for request in self._active]
            self._active.clear()
        for ticket in abandoned:
            ticket.cancel()

    def _admit(self) -> None:
        with self._wake:
            admitted: list[tuple[DenoiseJob, Ticket]] = []
            hopeless: list[Ticket] = []
            while len(self._active) + len(admitted) < self._max_batch:
                waiting = self._pending.pop()
                if waiting is None:
                    break
                if self._too_late(waiting[0]):
                    hopeless.append(waiting[1])
                else:
                    admitted.append(waiting)
        for ticket in hopeless:  # the pace fell while it waited: a 503 now, not a 504 later
            if self._metrics is not None:
                self._metrics.refused_past_deadline.inc()
            _fail(
                ticket,
                QueueFull("the UNet can no longer finish this request before its deadline; retry"),
            )
        for job, ticket in admitted:
            if ticket.future.cancelled():
                continue
            try:
                request = self._prepare(job, ticket)
            except Exception as error:
                _fail(ticket, error)
                continue
            if request.done:  # resumed from the checkpoint after its last step
                _resolve(ticket, request.latents[0].float().cpu().numpy())
                continue
            with self._wake:
                self._active.append(request)

    def _too_late(self, job: DenoiseJob) -> bool:
        """Whether `job`, started now, would end its steps after its deadline."""
        pace = self._pace_meter.pace
        if job.finish_by is None or pace is None:
            return False
        return pace.own_seconds(job) > job.finish_by - time.time()

    def _load_adapters(self, job: DenoiseJob) -> None:
        """The job's adapters resident, keeping those the running requests use; a 422 naming
        `loras` for one that does not load."""
        if self._adapters is None:
            raise InvalidArgument("loras", "this UNet serves no adapters (SD_LORA_DIR is unset)")
        in_use = {name for request in self._active for name, _ in request.job.loras}
        try:
            self._adapters.ensure([name for name, _ in job.loras], in_use)
        except LoraError as error:
            raise InvalidArgument("loras", str(error)) from None

    def _prepare(self, job: DenoiseJob, ticket: Ticket) -> _Active:
        if job.loras:
            self._load_adapters(job)
        device, dtype = self._placement.device, self._placement.dtype
        scheduler = self._schedulers.create(job.scheduler, job.steps, device)
        generator = torch.Generator("cpu").manual_seed(job.seed)
        shape = (
            1,
            self._denoiser.latent_channels,
            job.height // self._scale,
            job.width // self._scale,
        )
        timesteps = scheduler.timesteps
        inpaint = None
        nine_channels = self._denoiser.input_channels != self._denoiser.latent_channels
        if nine_channels and job.mask is None:
            raise InvalidArgument(
                "mask", "this is an inpainting model: send an image and a mask to repaint"
            )
        if job.mask is not None:
            timesteps, latents, inpaint = _inpaint_start(
                job, scheduler, generator, self._placement, as_input=nine_channels
            )
        elif job.init_image is None:
            # Same draw as the pipelines' prepare_latents for one image and this generator.
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = latents * scheduler.init_noise_sigma
        else:
            timesteps, latents = _image_start(
                job, job.init_image, scheduler, generator, self._placement
            )
        embedding_dim = self._denoiser.guidance_embedding_dim
        guided = job.negative_conditioning is not None and embedding_dim is None
        rows = [job.negative_conditioning, job.conditioning] if guided else [job.conditioning]
        conditioning = {
            name: torch.from_numpy(np.stack([row[name] for row in rows if row is not None]))
            for name in job.conditioning
        }
        if embedding_dim is not None:
            conditioning["timestep_cond"] = guidance_embedding(job.guidance_scale, embedding_dim)
        conditioning = {k: v.to(device=device, dtype=dtype) for k, v in conditioning.items()}
        index = 0
        if job.resume is not None:
            index, latents = self._resume(job.resume, scheduler, generator, latents)
        ticket.total_steps = len(timesteps)
        ticket.steps_done = index
        ticket.started_at = time.monotonic()
        return _Active(
            ticket=ticket,
            job=job,
            scheduler=scheduler,
            timesteps=timesteps,
            latents=latents,
            conditioning=conditioning,
            guided=guided,
            generator=generator,
            extra=step_kwargs(scheduler, generator),
            index=index,
            inpaint=inpaint,
        )

    def _resume(
        self,
        data: bytes,
        scheduler: SchedulerMixin,
        generator: torch.Generator,
        fresh: torch.Tensor,
    ) -> tuple[int, torch.Tensor]:
        """A checkpoint's step and latents, its scheduler and generator state restored; a
        checkpoint of another shape or a longer schedule is refused (ValueError)."""
        state = checkpoint.read(data)
        if state.latents.shape != fresh.shape or not 0 <= state.step <= len(scheduler.timesteps):
            raise ValueError(
                f"the checkpoint (step {state.step}, latents {tuple(state.latents.shape)}) does "
                f"not fit this request ({len(scheduler.timesteps)} steps, {tuple(fresh.shape)})"
            )
        checkpoint.restore(state, scheduler, self._placement.device)
        generator.set_state(state.generator)
        return state.step, state.latents.to(device=fresh.device, dtype=fresh.dtype)

    def _drop_cancelled(self) -> None:
        with self._wake:
            self._active = [r for r in self._active if not r.ticket.future.cancelled()]
            self._pending.remove(lambda waiting: waiting[1].future.cancelled())

    def _next_group(self) -> list[_Active]:
        """Requests sharing the latent shape; shapes take turns so no size starves."""
        shapes = list(dict.fromkeys(request.shape for request in self._active))
        shape = shapes[self._turn % len(shapes)]
        self._turn += 1
        return [request for request in self._active if request.shape == shape]

    @torch.inference_mode()
    def _denoise_once(self, group: list[_Active]) -> int:
        samples, timesteps = [], []
        for request in group:
            t = request.timesteps[request.index]
            sample = torch.cat([request.latents] * 2) if request.guided else request.latents
            sample = request.scheduler.scale_model_input(sample, t)
            inpaint = request.inpaint
            if inpaint is not None and inpaint.as_input:  # channels: latents, mask, masked
                rows = sample.shape[0]
                extra = [inpaint.mask.expand(rows, -1, -1, -1), inpaint.masked_latents]
                sample = torch.cat([sample, extra[0], extra[1].expand(rows, -1, -1, -1)], dim=1)
            samples.append(sample)
            # Float timesteps (Euler) and integer ones (DDIM) stack as float32: the UNet's
            # sinusoidal embedding converts to float anyway, so this is exact.
            timesteps.append(t.to(torch.float32).reshape(1).expand(sample.shape[0]))
        batch = torch.cat(samples)
        conditioning = {
            name: torch.cat([request.conditioning[name] for request in group])
            for name in group[0].conditioning
        }
        with self._applied_adapters(group):
            noise = self._denoiser(batch, torch.cat(timesteps).to(batch.device), conditioning)
        offset = 0
        for request in group:
            rows = 2 if request.guided else 1
            prediction = noise[offset : offset + rows]
            offset += rows
            if request.guided:
                unconditional, conditional = prediction.chunk(2)
                scale = request.job.guidance_scale
                prediction = unconditional + scale * (conditional - unconditional)
                if request.job.guidance_rescale > 0.0:
                    prediction = rescale_noise_cfg(
                        prediction, conditional, guidance_rescale=request.job.guidance_rescale
                    )
            t = request.timesteps[request.index]
            request.latents = request.scheduler.step(
                prediction, t, request.latents, **request.extra, return_dict=False
            )[0]
            if request.inpaint is not None and not request.inpaint.as_input:
                request.latents = _keep_unmasked(request, request.inpaint)
            request.index += 1
            request.ticket.steps_done = request.index
            if request.ticket.on_step is not None:
                _notify(request.ticket.on_step, request)
        return offset

    def _applied_adapters(self, group: list[_Active]) -> contextlib.AbstractContextManager[None]:
        """Each request's adapters on its own rows (both of a guided request's)."""
        if self._adapters is None or not any(request.job.loras for request in group):
            return contextlib.nullcontext()
        rows = []
        for request in group:
            rows += [request.job.loras] * (2 if request.guided else 1)
        return self._adapters.applied(rows)


def _cost(job: DenoiseJob) -> float:
    """A job's UNet work, for fair sharing: steps times rows times latent pixels (64² at 512²)."""
    rows = 2 if job.guided else 1
    return float(job.steps * rows * (job.height // 8) * (job.width // 8)) / 4096.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to give back this way
        return None


def give_back_freed_memory() -> None:
    """glibc keeps the heap pages a busy batch freed, so a replica's resident memory would stay
    at its busiest and creep up with fragmentation; malloc_trim returns them to the system.
    Called when the engine goes idle (a millisecond or so)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# The estimate is a measured pace: a request admitted with no room to spare misses its deadline
# whenever the pace slows (on a CPU shared with the load, it slows as the load grows), so the
# UNet keeps a quarter of the time left in hand.
DEADLINE_HEADROOM = 0.75


def _image_start(
    job: DenoiseJob,
    image: ImageLatents,
    scheduler: SchedulerMixin,
    generator: torch.Generator,
    placement: Placement,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The timesteps left and the noised image latents an image-to-image request starts from,
    as StableDiffusionImg2ImgPipeline's get_timesteps and prepare_latents make them: the
    schedule's last `strength` part, the image's latent sample drawn from the generator first,
    then the noise, added at the first timestep left."""
    device, dtype = placement.device, placement.dtype
    timesteps = _strength_schedule(job, scheduler)
    sample = _latent_sample(image, generator, placement)
    noise = randn_tensor(sample.shape, generator=generator, device=device, dtype=dtype)
    return timesteps, scheduler.add_noise(sample, noise, timesteps[:1])


def _strength_schedule(job: DenoiseJob, scheduler: SchedulerMixin) -> torch.Tensor:
    """The schedule's last `strength` part, the scheduler told where it begins (the pipelines'
    get_timesteps)."""
    begin = image_start_index(job.steps, job.strength, scheduler.order)
    timesteps = scheduler.timesteps[begin:]
    if len(timesteps) == 0:
        raise ValueError(f"strength {job.strength} leaves no step of {job.steps} to run")
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return timesteps


def _latent_sample(
    image: ImageLatents, generator: torch.Generator, placement: Placement
) -> torch.Tensor:
    """A picture's latent sample [1, C, h, w] as the VAE's latent_dist.sample draws it."""
    device, dtype = placement.device, placement.dtype
    mean = torch.from_numpy(image.mean).unsqueeze(0).to(device=device, dtype=dtype)
    std = torch.from_numpy(image.std).unsqueeze(0).to(device=device, dtype=dtype)
    return mean + std * randn_tensor(mean.shape, generator=generator, device=device, dtype=dtype)


def _inpaint_start(
    job: DenoiseJob,
    scheduler: SchedulerMixin,
    generator: torch.Generator,
    placement: Placement,
    *,
    as_input: bool,
) -> tuple[torch.Tensor, torch.Tensor, _Inpaint]:
    """StableDiffusionInpaintPipeline's start, draws in its order: the picture's latent sample
    (a plain UNet's blend needs it, or strength < 1 starts from it), the noise, then the masked
    picture's latent sample; strength 1 starts from noise alone."""
    assert job.init_image is not None and job.masked_image is not None and job.mask is not None
    device, dtype = placement.device, placement.dtype
    timesteps = _strength_schedule(job, scheduler)
    full_strength = job.strength == 1.0

    def drawn(image: ImageLatents) -> torch.Tensor:
        mean = torch.from_numpy(image.mean).unsqueeze(0).to(device=device, dtype=dtype)
        std = torch.from_numpy(image.std).unsqueeze(0).to(device=device, dtype=dtype)
        return mean + std * randn_tensor(
            mean.shape, generator=generator, device=device, dtype=dtype
        )

    image_latents = None if as_input and full_strength else drawn(job.init_image)
    shape = tuple(job.init_image.mean.shape)
    noise = randn_tensor((1, *shape), generator=generator, device=device, dtype=dtype)
    if full_strength:
        latents = noise * scheduler.init_noise_sigma
    else:
        assert image_latents is not None
        latents = scheduler.add_noise(image_latents, noise, timesteps[:1])
    masked = drawn(job.masked_image)
    mask = torch.from_numpy(job.mask).unsqueeze(0).to(device=device, dtype=dtype)
    inpaint = _Inpaint(mask, masked, None if as_input else image_latents, noise, as_input)
    return timesteps, latents, inpaint


def _keep_unmasked(request: _Active, inpaint: _Inpaint) -> torch.Tensor:
    """The kept area put back after a step: the picture's latents noised to the next timestep
    (none after the last), as the inpainting pipeline does for a plain UNet."""
    assert inpaint.image_latents is not None
    kept = inpaint.image_latents
    if request.index < len(request.timesteps) - 1:
        next_t = request.timesteps[request.index + 1]
        kept = request.scheduler.add_noise(kept, inpaint.noise, torch.tensor([next_t]))
    return (1 - inpaint.mask) * kept + inpaint.mask * request.latents


def _step_cost(job: DenoiseJob) -> float:
    return _cost(job) / job.steps


def _notify(observer: StepObserver, request: _Active) -> None:
    try:
        state = None
        if request.checkpoint_due():
            state = checkpoint.capture(
                request.index, request.latents, request.scheduler, request.generator
            )
        observer(request.index, len(request.timesteps), request.latents, state)
    except Exception:  # a progress listener must never stop the batch
        logger.exception("step observer failed for request %s", request.ticket.id)


def _resolve(ticket: Ticket, result: np.ndarray) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled by the caller after its last step
        ticket.future.set_result(result)


def _fail(ticket: Ticket, error: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        ticket.future.set_exception(error)
