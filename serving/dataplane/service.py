"""The data plane: the one generation call every protocol makes, and what the protocols share.

`DataPlane.generate(params, context)` owns everything between a protocol's parsed request and
its answer: defaults and limits, whether the request is determined (the client chose the seed),
the prompt's token limit, the deadline and cancellation, the result cache, the three stages,
encoding, storing and the metrics. Protocol handlers only translate wire formats and rename
fields in errors. It imports neither Ray, FastAPI nor gRPC: stages and shared state come in
through `StageClient` and `Store`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from serving.dataplane.checkpoints import Checkpoint, JobCheckpoints
from serving.dataplane.clients import ANONYMOUS, ClientDirectory, ClientShare, Priority
from serving.dataplane.codecs import (
    MEDIA_TYPES,
    decode_image,
    encode_image,
    latent_size_mask,
    mask_input,
    vae_input,
)
from serving.dataplane.feedback import FeedbackPage, FeedbackParams, feedback_page, record_feedback
from serving.dataplane.model import ServedModel
from serving.dataplane.request import GenerateParams, GenerationRequest, RequestContext, resolve
from serving.dataplane.results import StoredImage, provenance, request_key
from serving.dataplane.stages import (
    DenoiseJob,
    DenoiseResult,
    StageClient,
    StepProgress,
    TextEmbedding,
)
from serving.dataplane.store import Store
from serving.errors import DeadlineExceeded, InvalidArgument, NotFound, Reason, ServingError
from serving.metrics import IngressMetrics
from serving.models.loras import LoraError, LoraLibrary, describe_all
from serving.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
ProgressSink = Callable[[StepProgress], Awaitable[None]]
READINESS_TTL_S = 1.0  # probes, kserve's per-inference check and v1 status share one answer
UNKNOWN_CLIENT = ClientShare("addr:unknown", ANONYMOUS, 1.0, Priority.INTERACTIVE)


@dataclass(frozen=True)
class PreparedRequest:
    """A request checked and resolved, before any stage runs (a job is prepared at submit)."""

    request: GenerationRequest
    determined: bool  # the client chose the seed: the result may come from the result cache
    warnings: list[str]
    denoising_steps: int  # per image: what progress counts (PNDM runs one more than `steps`)
    share: ClientShare = UNKNOWN_CLIENT  # its fair share (frozen: one default serves all)

    def to_json(self) -> dict[str, Any]:
        """What a queued job carries (serving/dataplane/job_queue.py)."""
        image, mask = self.request.image, self.request.mask  # left out of the request's JSON
        return {
            "request": self.request.model_dump(mode="json"),
            "image": None if image is None else base64.b64encode(image).decode("ascii"),
            "mask": None if mask is None else base64.b64encode(mask).decode("ascii"),
            "determined": self.determined,
            "warnings": self.warnings,
            "denoising_steps": self.denoising_steps,
            "share": self.share.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparedRequest:
        share = data.get("share")  # absent from jobs queued before fair sharing
        request = GenerationRequest.model_validate(data["request"])
        for name in ("image", "mask"):
            if data.get(name) is not None:
                request = request.model_copy(update={name: base64.b64decode(data[name])})
        return cls(
            request,
            determined=data["determined"],
            warnings=list(data["warnings"]),
            denoising_steps=data["denoising_steps"],
            share=UNKNOWN_CLIENT if share is None else ClientShare.from_json(share),
        )


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    digest: str
    seed: int


@dataclass(frozen=True)
class GenerationResult:
    """What every protocol answers from: encoded images, their digests, timings, warnings; the
    pixels too when the caller asked for them (a raw tensor output)."""

    request: GenerationRequest
    images: list[EncodedImage]
    timings_ms: dict[str, float]
    warnings: list[str]
    cached: bool
    pixels: list[np.ndarray] | None = None

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.request.output_format]


@dataclass(frozen=True)
class ModelRoute:
    """A served model and the stages that run it."""

    model: ServedModel
    stages: StageClient


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        routes: dict[str, ModelRoute],
        store: Store,
        metrics: IngressMetrics,
        clients: ClientDirectory | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._clients = clients or ClientDirectory()
        self.loras = LoraLibrary(settings.lora_dir)
        base = re.escape(settings.public_base_url.rstrip("/"))
        self._stored_url = re.compile(
            rf"^(?:{base})?/v1/images/(?P<digest>[0-9a-f]{{40}})\.(?P<ext>png|jpeg|webp)$"
        )
        self._routes = routes
        self._default = settings.default_model_name()
        self._canary = random.Random()  # which unversioned requests go to a challenger
        self.in_flight = 0  # generations under way (a stopping service waits for them)
        # Seconds from the last denoising step to the stored image (decode, encode, store),
        # averaged: the UNet must finish this much before a request's deadline.
        self._after_unet_s = 0.0
        self._readiness: dict[str, bool] = {}
        self._readiness_at = -READINESS_TTL_S
        self._probe: asyncio.Task[dict[str, bool]] | None = None

    @property
    def models(self) -> list[ServedModel]:
        """The served models, the default first."""
        routes = sorted(self._routes.values(), key=lambda route: route.model.name != self._default)
        return [route.model for route in routes]

    def model(self, name: str | None = None) -> ServedModel:
        """A served model by name (the default for None); NotFound naming the served ones."""
        return self._route(name).model

    def _route(self, name: str | None) -> ModelRoute:
        route = self._routes.get(self._default if name is None else name)
        if route is None:
            served = ", ".join(repr(model.name) for model in self.models)
            raise NotFound(f"model {name!r} is not served here; this service serves {served}")
        return route

    # -- the generation call

    def prepare(
        self,
        params: GenerateParams,
        context: RequestContext | None = None,
        *,
        default_priority: Priority = Priority.INTERACTIVE,
    ) -> PreparedRequest:
        """Defaults applied and every limit and the prompt's token count checked; raises
        InvalidArgument naming the field (NotFound for a model not served). The caller's fair
        share comes from its API key or address (`context`)."""
        name, version = self.resolve_model(params.model)
        model = self.model(name)
        request = resolve(params, self.settings.limits, model.profile)
        request = self._with_version(request, model, version)
        try:
            self._check_loras(request, model)
        except InvalidArgument as error:
            if error.field == "model":  # the version's own adapter: the version fails, not the ask
                self.metrics.record_generation(model.name, request.model_version, error.reason)
            raise
        warnings = model.guard.check(request, self.settings.limits)
        context = context or RequestContext()
        share, warning = self._clients.share(
            context.authorization, context.address, _priority(params.priority), default_priority
        )
        return PreparedRequest(
            request,
            determined=params.seed is not None,
            warnings=[*warnings, warning] if warning else warnings,
            denoising_steps=model.denoising_steps(request),
            share=share,
        )

    async def with_stored_pictures(self, params: GenerateParams) -> GenerateParams:
        """`image` and `mask` given as the URL of an image this server stored (relative,
        `/v1/images/<digest>.<ext>`, or under SD_PUBLIC_BASE_URL) replaced by its bytes. Only
        those: the server fetches no other URL."""
        updates = {}
        for field in ("image", "mask"):
            value = getattr(params, field)
            if value is None or not value.lstrip().startswith(("/", "http://", "https://")):
                continue
            match = self._stored_url.match(value.strip())
            if match is None:
                raise InvalidArgument(
                    field,
                    "must be base64, a data: URL, or the URL of an image this server stored "
                    "(/v1/images/<digest>.<ext>); other URLs are not fetched",
                )
            stored = await self.store.get_image(match["digest"])
            if stored is None or stored.output_format != match["ext"]:
                raise InvalidArgument(
                    field, f"names {value}, an image this server does not have (or evicted)"
                )
            updates[field] = base64.b64encode(stored.data).decode("ascii")
        return params.model_copy(update=updates) if updates else params

    def resolve_model(self, model: str | None) -> tuple[str | None, str | None]:
        """`name@version` split (either part may be absent); an unknown model or version is
        NotFound naming what is served."""
        name, at, version = (model or "").partition("@")
        served = self.model(name or None)
        if at and not version:
            raise InvalidArgument("model", f"{model!r} names no version after '@'")
        if at and version not in served.rollout.versions:
            known = ", ".join(served.rollout.versions) or "none: it is unversioned"
            raise NotFound(f"model {served.name!r} has no version {version!r}; it serves {known}")
        return served.name, version or None

    def _with_version(
        self, request: GenerationRequest, model: ServedModel, version: str | None
    ) -> GenerationRequest:
        """The request bound to the version that serves it: the one it named, else the
        champion, or the challenger for the rollout's canary share; with its adapter."""
        rollout = model.rollout
        if version is None:
            version = rollout.champion_version
            if rollout.challenger is not None and self._canary.random() * 100 < (
                rollout.canary_percent
            ):
                version = rollout.challenger
        if version is None:
            return request
        adapter = rollout.versions[version].adapter
        for index, (name, _) in enumerate(request.loras):
            if name == adapter:
                raise InvalidArgument(
                    f"loras[{index}].name", f"{name!r} is model version {version}'s own adapter"
                )
        loras = () if adapter is None else ((adapter, rollout.versions[version].scale),)
        return request.model_copy(update={"model_version": version, "version_loras": loras})

    def _check_loras(self, request: GenerationRequest, model: ServedModel) -> None:
        """Each adapter is in the library, readable, and made for this model's family (a
        version's own adapter is named by `model`)."""
        fields = ["model"] * len(request.version_loras)
        fields += [f"loras[{index}].name" for index in range(len(request.loras))]
        for field, (name, _) in zip(fields, request.adapters, strict=True):
            try:
                info = self.loras.get(name)
            except KeyError:
                known = ", ".join(sorted(self.loras.paths())) or "none: SD_LORA_DIR holds none"
                raise InvalidArgument(field, f"no adapter {name!r}; there are {known}") from None
            except LoraError as error:
                raise InvalidArgument(field, str(error)) from None
            misfit = info.misfit(model.info.context_dim, model.unet_layers)
            if misfit is not None:
                raise InvalidArgument(
                    field,
                    f"adapter {name!r} {misfit}; {model.name} is {model.profile.kind} (text "
                    f"width {model.info.context_dim})",
                )

    def describe_model(self, name: str) -> dict[str, Any]:
        """A served model as the APIs report it: family, defaults, limits, samplers, and the
        LoRA adapters that fit it."""
        model = self.model(name)
        fitting = [
            adapter["name"]
            for adapter in self.adapters()
            if model.name in adapter.get("models", ()) and "error" not in adapter
        ]
        return {**model.describe(), "loras": fitting}

    def adapters(self) -> list[dict[str, Any]]:
        """The adapter library, each adapter with the served models it fits."""
        models = {model.name: (model.info.context_dim, model.unet_layers) for model in self.models}
        return describe_all(self.loras, models)

    def _text_encoder_loras(self, request: GenerationRequest) -> tuple[tuple[str, float], ...]:
        """The request's adapters that have text-encoder weights (checked at prepare)."""
        found = []
        for name, scale in request.adapters:
            try:
                if self.loras.get(name).text_encoder:
                    found.append((name, scale))
            except (KeyError, LoraError):  # removed since: the stages will say so
                found.append((name, scale))
        return tuple(found)

    def _adapters_stamp(self, request: GenerationRequest) -> str:
        """The request's adapter files as they are now: a replaced file is another result."""
        stamps = []
        for name, _ in request.adapters:
            path = self.loras.path(name)
            stat = path.stat() if path is not None else None
            stamps.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}" if stat else name)
        return ",".join(stamps)

    async def generate(
        self,
        params: GenerateParams,
        context: RequestContext,
        *,
        progress: ProgressSink | None = None,
        preview: bool = False,
        pixels: bool = False,
    ) -> GenerationResult:
        """Prepare and run: the call of every synchronous protocol."""
        params = await self.with_stored_pictures(params)
        return await self.run(
            self.prepare(params, context),
            context,
            progress=progress,
            preview=preview,
            pixels=pixels,
        )

    async def run(
        self,
        prepared: PreparedRequest,
        context: RequestContext,
        *,
        progress: ProgressSink | None = None,
        preview: bool = False,
        pixels: bool = False,
        checkpoints: JobCheckpoints | None = None,
    ) -> GenerationResult:
        """Encoded images for a prepared request. With `progress`, every denoising step of every
        image is reported as it happens (with a latent preview when `preview`); with
        `checkpoints` too (a durable job), each image resumes from its saved checkpoint and a new
        one is saved every `checkpoints.every` steps. A determined
        request made before is answered from the result cache without touching the stages.
        Past the deadline (the server's, or the client's own when shorter) the work is cancelled
        and the client gets DeadlineExceeded."""
        limit = self.settings.request_timeout_s
        deadline = limit if context.timeout_s is None else min(limit, context.timeout_s)
        # From when the request reached the service: its wait in the proxy's queue counts too.
        deadline_at = (context.received_at or time.time()) + deadline
        request = prepared.request
        self.in_flight += 1
        try:
            result = await asyncio.wait_for(
                self._run(prepared, progress, preview, pixels, checkpoints, deadline_at),
                max(deadline_at - time.time(), 0.0),
            )
        except TimeoutError:
            self.metrics.record_generation(
                request.model, request.model_version, Reason.DEADLINE_EXCEEDED
            )
            raise DeadlineExceeded(
                f"the request took longer than its {deadline:g} s deadline and was cancelled"
            ) from None
        except ServingError as error:
            self.metrics.record_generation(request.model, request.model_version, error.reason)
            raise
        except Exception:
            self.metrics.record_generation(request.model, request.model_version, Reason.INTERNAL)
            raise
        finally:
            self.in_flight -= 1
        self.metrics.record_generation(
            request.model, request.model_version, "ok", result.timings_ms["total"] / 1000
        )
        images = 0 if result.cached else len(result.images)
        self.metrics.record_result(prepared.request.model, result.timings_ms, images)
        self.metrics.record_adapters([name for name, _ in prepared.request.adapters])
        share = prepared.share
        self.metrics.client_request_seconds.observe(
            result.timings_ms["total"] / 1000,
            tags={"client": share.name, "priority": share.priority.value},
        )
        return result

    async def _run(
        self,
        prepared: PreparedRequest,
        progress: ProgressSink | None,
        preview: bool,
        pixels: bool,
        checkpoints: JobCheckpoints | None,
        deadline: float,  # wall clock (time.time()): the UNet replica may be on another node
    ) -> GenerationResult:
        started = time.perf_counter()
        request = prepared.request
        # 1. The result cache, for a determined request.
        route = self._route(request.model)
        key = None
        if prepared.determined:
            adapters = f"+{self._adapters_stamp(request)}" if request.adapters else ""
            key = request_key(route.model.id + adapters, request)
        if key is not None:
            hit = await self.store.lookup_result(key)
            self.metrics.record_result_lookup(hit is not None)
            if hit is not None:
                cached, stored = hit
                kept = zip(stored, cached.digests, cached.seeds, strict=True)
                images = [EncodedImage(image.data, digest, seed) for image, digest, seed in kept]
                elapsed = (time.perf_counter() - started) * 1000
                return GenerationResult(
                    request,
                    images,
                    {"result_cache": elapsed, "total": elapsed},
                    prepared.warnings,
                    cached=True,
                    pixels=[decode_image(image.data) for image in stored] if pixels else None,
                )
        # 2. Text encoder, UNet, VAE.
        rendered, timings = await self._render(
            route, request, prepared.share, progress, preview, checkpoints, deadline
        )
        # 3. Encode, then store the images (and remember a determined request's result).
        before = time.perf_counter()
        encoded = [encode_image(image, request.output_format) for image in rendered]
        timings["encode"] = (time.perf_counter() - before) * 1000
        seeds = request.seeds()
        made = [
            StoredImage(data, request.output_format, provenance(request, seed))
            for data, seed in zip(encoded, seeds, strict=True)
        ]
        digests = await self.store.keep(made, key, seeds)
        after_unet_s = (time.perf_counter() - before) + timings["vae"] / 1000
        self._after_unet_s = 0.8 * self._after_unet_s + 0.2 * after_unet_s
        timings["total"] = (time.perf_counter() - started) * 1000
        images = [
            EncodedImage(data, digest, seed)
            for data, digest, seed in zip(encoded, digests, seeds, strict=True)
        ]
        return GenerationResult(
            request, images, timings, prepared.warnings, False, rendered if pixels else None
        )

    async def _render(
        self,
        route: ModelRoute,
        request: GenerationRequest,
        share: ClientShare,
        progress: ProgressSink | None,
        preview: bool,
        checkpoints: JobCheckpoints | None,
        deadline: float,
    ) -> tuple[list[np.ndarray], dict[str, float]]:
        """Pixels from the model's three stages, and the time each took."""
        started = time.perf_counter()
        stages, info = route.stages, route.model.info
        # Guidance as CFG rows (an LCM-style model takes it as an embedding instead); SDXL's
        # empty negative prompt is zeros, as its pipeline does (force_zeros_for_empty_prompt).
        guided = request.guided and not info.guidance_embedding
        zero_negative = info.force_zeros_for_empty_prompt and not request.negative_prompt
        texts = [request.prompt]
        if guided and not zero_negative:
            texts.append(request.negative_prompt)
        # Adapters with text-encoder weights apply there too (to the negative prompt as well).
        text_loras = self._text_encoder_loras(request)
        embeddings = await all_or_none([stages.encode_text(text, text_loras) for text in texts])
        text_done = time.perf_counter()
        init_image = masked_image = latent_mask = None
        if request.image is not None:  # image-to-image: the VAE encodes the starting picture
            pixels = vae_input(request.image, request.height, request.width, info.vae_scale_factor)
            if request.mask is None:
                init_image = await stages.encode_image(pixels)
            else:  # inpainting: the picture, and the picture with the area to repaint blacked out
                mask = mask_input(
                    request.mask, request.height, request.width, info.vae_scale_factor
                )
                init_image, masked_image = await all_or_none(
                    [stages.encode_image(pixels), stages.encode_image(pixels * (mask < 0.5))]
                )
                latent_mask = latent_size_mask(mask, info.vae_scale_factor)
        encoded = time.perf_counter()

        positive = conditioning(embeddings[0], request)
        negative = None
        if guided and zero_negative:
            negative = conditioning(embeddings[0], request, zeros=True)
        elif guided:
            negative = conditioning(embeddings[1], request)
        saved: dict[int, Checkpoint] = {}
        if checkpoints is not None and progress is not None:
            saved = await checkpoints.load()
        every = 0 if checkpoints is None else checkpoints.every
        # The deadline on the wall clock, less what comes after the UNet (decode, encode, store).
        finish_by = deadline - self._after_unet_s
        jobs = [
            DenoiseJob(
                conditioning=positive,
                negative_conditioning=negative,
                height=request.height,
                width=request.width,
                steps=request.steps,
                guidance_scale=request.guidance_scale,
                guidance_rescale=request.guidance_rescale,
                seed=seed,
                scheduler=request.scheduler,
                checkpoint_every=every,
                resume=saved[index].state if index in saved else None,
                client=share.client,
                weight=share.weight,
                priority_rank=share.priority.rank,
                finish_by=finish_by,
                init_image=init_image,
                strength=1.0 if request.strength is None else request.strength,
                loras=request.adapters,
                mask=latent_mask,
                masked_image=masked_image,
            )
            for index, seed in enumerate(request.seeds())
        ]
        if progress is None:
            denoised = await all_or_none([stages.denoise(job) for job in jobs])
        else:
            denoised = await all_or_none(
                [
                    self._denoise_reporting(stages, job, i, progress, preview, checkpoints)
                    for i, job in enumerate(jobs)
                ]
            )
        denoise_done = time.perf_counter()

        images = await all_or_none([stages.decode(result.latents) for result in denoised])
        timings = {
            "text_encoder": (text_done - started) * 1000,
            "unet_queue": max(result.queued_ms for result in denoised),
            "unet": (denoise_done - encoded) * 1000,
            "vae": (time.perf_counter() - denoise_done) * 1000,
        }
        if init_image is not None:
            timings["vae_encode"] = (encoded - text_done) * 1000
        return images, timings

    async def _denoise_reporting(
        self,
        stages: StageClient,
        job: DenoiseJob,
        index: int,
        progress: ProgressSink,
        preview: bool,
        checkpoints: JobCheckpoints | None,
    ) -> DenoiseResult:
        async with aclosing(stages.denoise_stream(job, preview)) as stream:
            async for item in stream:
                if isinstance(item, DenoiseResult):
                    return item
                if item.checkpoint is not None and checkpoints is not None:
                    await self._save_checkpoint(checkpoints, index, item)
                await progress(replace(item, image_index=index, checkpoint=None))
        raise RuntimeError("the UNet's progress stream ended without a result")

    async def _save_checkpoint(
        self, checkpoints: JobCheckpoints, index: int, step: StepProgress
    ) -> None:
        """Saved before its step is reported; a failed save is counted and the job goes on (a
        takeover would resume from an older checkpoint)."""
        assert step.checkpoint is not None
        started = time.perf_counter()
        try:
            await checkpoints.save(index, Checkpoint(step.step, step.checkpoint))
        except Exception:
            logger.exception("saving image %s's checkpoint at step %s failed", index, step.step)
            self.metrics.checkpoint_failures.inc()
            return
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)

    # -- what the protocols share besides generation

    async def image(self, digest: str) -> StoredImage | None:
        return await self.store.get_image(digest)

    async def feedback(self, params: FeedbackParams, context: RequestContext) -> dict[str, Any]:
        """Keep a client's rating of an image, with what made the image."""
        share, _ = self._clients.share(
            context.authorization, context.address, None, Priority.INTERACTIVE
        )
        row = await record_feedback(self.store, params, share.name)
        made = row["provenance"]
        self.metrics.record_feedback(
            made.get("model", "unknown"),
            made.get("model_version"),
            params.rating,
            params.caption is not None,
        )
        return row

    async def feedback_page(self, offset: int, limit: int) -> FeedbackPage:
        return await feedback_page(self.store, offset, limit)

    def image_url(self, digest: str, output_format: str) -> str:
        """Where a stored image is served: relative, or under the CDN's SD_PUBLIC_BASE_URL."""
        base = self.settings.public_base_url.rstrip("/")
        return f"{base}/v1/images/{digest}.{output_format}"

    async def readiness(self) -> dict[str, bool]:
        """Per stage (and the shared store): loaded and answering. One source for every probe
        on every transport, probed at most once per READINESS_TTL_S."""
        if self.settings.draining():  # stopping: at once, whatever was cached
            return {**self._readiness, "accepting": False}
        if time.monotonic() - self._readiness_at < READINESS_TTL_S:
            return self._readiness
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_stages())
        return await asyncio.shield(self._probe)

    async def ready(self) -> bool:
        return all((await self.readiness()).values())

    async def watch_readiness(self, interval_s: float = 5.0) -> None:
        """Probe every `interval_s` whether or not anyone asks, so the store's gauge is fresh
        (Ray drops a series that stops being recorded) and a probe finds a recent answer."""
        while True:
            try:
                await self.readiness()
            except Exception:
                logger.warning("probing readiness failed", exc_info=True)
            await asyncio.sleep(interval_s)

    async def _probe_stages(self) -> dict[str, bool]:
        """Stages by name (`unet`), or by model and name (`sdxl/unet`) when several models are
        served; and the shared store."""

        async def store_ready() -> bool:
            try:
                return await asyncio.wait_for(self.store.ready(), 2.0)
            except Exception:
                return False

        names = list(self._routes)
        answers, store = await asyncio.gather(
            asyncio.gather(*(self._routes[name].stages.readiness() for name in names)),
            store_ready(),
        )
        readiness: dict[str, bool] = {}
        for name, stages in zip(names, answers, strict=True):
            prefix = f"{name}/" if len(names) > 1 else ""
            readiness.update({prefix + stage: ready for stage, ready in stages.items()})
        self._readiness = {**readiness, "result_store": store}
        self.metrics.store_up.set(1.0 if store else 0.0)
        self._readiness_at = time.monotonic()
        return self._readiness


def _priority(value: str | None) -> Priority | None:
    if value is None:
        return None
    try:
        return Priority(value)
    except ValueError:
        choices = ", ".join(priority.value for priority in Priority)
        raise InvalidArgument("priority", f"must be one of {choices} (got {value!r})") from None


def conditioning(
    embedding: TextEmbedding, request: GenerationRequest, *, zeros: bool = False
) -> dict[str, np.ndarray]:
    """One denoiser row's conditioning, by the names the denoiser takes: the prompt's hidden
    states and, for SDXL, its pooled embedding and the time ids (original size, crop, target
    size) as StableDiffusionXLPipeline builds them. `zeros`: the empty negative prompt."""
    hidden = np.zeros_like(embedding.hidden) if zeros else embedding.hidden
    row = {"encoder_hidden_states": hidden}
    if request.original_size is not None:
        assert embedding.pooled is not None, "an SDXL model's text encoder pools"
        assert request.crops_coords_top_left is not None and request.target_size is not None
        pooled = np.zeros_like(embedding.pooled) if zeros else embedding.pooled
        time_ids = (*request.original_size, *request.crops_coords_top_left, *request.target_size)
        row["text_embeds"] = pooled
        row["time_ids"] = np.asarray(time_ids, dtype=np.float32)
    return row


async def all_or_none(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run the calls together; when one fails or the caller is cancelled, cancel the others
    (so no stage keeps working for an answer nobody will read)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
