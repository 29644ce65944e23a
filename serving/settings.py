"""The one settings class: every knob of the service, read from `SD_*` environment variables.

Nothing else in the package reads the environment. `build_app(args)` takes the same fields as
keyword arguments, so a RayService can name only `import_path` and `args`.

One shape: every per-stage knob is nested under its stage (`SD_UNET__MAX_BATCH_SIZE`,
`SD_UNET__NUM_GPUS`), service-wide knobs are flat (`SD_REQUEST_TIMEOUT_S`). An `SD_*` variable
that names no setting stops the start, naming the closest one, so a renamed or misspelt variable
never falls back to a default in silence.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# `default` is the scheduler the model ships with (its class and configuration).
SchedulerName = Literal[
    "default", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "pndm", "unipc", "lcm"
]
Stage = Literal["ingress", "text_encoder", "unet", "vae"]
OutputFormat = Literal["png", "jpeg", "webp"]


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sd-serving"


class StageSettings(BaseModel):
    """Placement and autoscaling of one Ray Serve deployment."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="fractional shares allowed, e.g. 0.25")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads of this stage's replicas (default: "
        "Settings.torch_threads, else on CPU the UNet's engine thread takes the node's CPUs "
        "and the other stages Ray's, which follows num_cpus)",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources, e.g. {'pool-unet': 0.001} pins the stage to the "
        "worker group (node pool) that advertises that resource",
    )
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(2.0, gt=0)
    max_ongoing_requests: int = Field(16, ge=1)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(120.0, ge=0)

    @model_validator(mode="after")
    def _replica_bounds(self) -> StageSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self

    def autoscaling_config(self) -> dict[str, float | int]:
        config: dict[str, float | int] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }
        if self.initial_replicas is not None:
            config["initial_replicas"] = self.initial_replicas
        return config

    def ray_actor_options(self) -> dict[str, object]:
        options: dict[str, object] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


class IngressStage(StageSettings):
    num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)
    max_queued_requests: int = Field(
        1024,
        ge=-1,
        description="requests Serve's proxy holds for a busy ingress (every replica at "
        "max_ongoing_requests) before answering 503 with Retry-After; -1: no bound",
    )


class TextEncoderStage(StageSettings):
    num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
    max_batch_size: int = Field(8, ge=1, description="prompts encoded in one forward")
    batch_wait_s: float = Field(0.005, ge=0, description="how long a batch waits to fill")
    cache_size: int = Field(
        1024, ge=0, description="text-embedding LRU entries per replica (0 disables the cache)"
    )
    max_resident_loras: int = Field(
        16, ge=1, description="LoRA adapters with text-encoder weights kept loaded per replica"
    )
    max_resident_lora_bytes: int = Field(
        1 << 30, ge=1, description="bytes of such LoRA files kept loaded per replica"
    )


class UNetStage(StageSettings):
    num_cpus: float = Field(1.0, ge=0)
    max_ongoing_requests: int = Field(72, ge=1)
    target_ongoing_requests: float = Field(6.0, gt=0)
    max_batch_size: int = Field(8, ge=1, description="requests denoised together per step")
    max_queue: int = Field(64, ge=0, description="requests waiting for a batch slot before 503")
    max_resident_loras: int = Field(
        16, ge=1, description="LoRA adapters kept loaded per replica (least recently used go)"
    )
    max_resident_lora_bytes: int = Field(
        1 << 30, ge=1, description="bytes of LoRA files kept loaded per replica"
    )


class VAEStage(StageSettings):
    num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int = Field(32, ge=1)
    max_batch_size: int = Field(4, ge=1, description="latents decoded in one forward")
    batch_wait_s: float = Field(0.005, ge=0, description="how long a batch waits to fill")


class ResultStoreStage(StageSettings):
    # One replica: the store is the single place every ingress replica finds an image.
    num_cpus: float = Field(0.1, ge=0)
    max_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(2048, ge=1)  # each open job event stream holds one


class Limits(BaseModel):
    """Bounds on what one request may ask for; every violation answers 422 naming the field."""

    model_config = ConfigDict(extra="forbid")

    min_size: int = 64
    max_width: int = 1024
    max_height: int = 1024
    min_steps: int = 1
    max_steps: int = 150
    max_num_images: int = 4
    max_guidance_scale: float = 30.0
    max_prompt_chars: int = 4000
    max_input_side: int = Field(
        4096, ge=64, description="largest width or height of an input image (image-to-image)"
    )
    max_loras: int = Field(4, ge=0, description="LoRA adapters one request may apply")
    max_lora_scale: float = Field(
        2.0, gt=0, description="largest |scale| of a request's LoRA adapter"
    )
    prompt_overflow: Literal["reject", "truncate"] = Field(
        "reject",
        description="prompts over the tokenizer's limit are rejected (422) or truncated (with a "
        "warning in the response)",
    )


class Defaults(BaseModel):
    """Values used when a request leaves a field out; unset ones are the model's own (its native
    size and shipped scheduler; steps and guidance by its family, see README's family table)."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    scheduler: SchedulerName | None = None
    output_format: OutputFormat = "png"


class ModelDefaults(BaseModel):
    """One model's own defaults, over the family's and the service-wide ones."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    scheduler: SchedulerName | None = None
    size: int | None = Field(None, ge=64, description="width and height when a request gives none")
    max_steps: int | None = Field(None, ge=1, description="tighter than limits.max_steps")


VERSION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # travels in URLs and `name@version`


class ModelVersion(BaseModel):
    """One version of a model: its base weights, or a LoRA adapter over them (a tuned model
    from `sd-serving tune`, found in SD_LORA_DIR by name)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(
        None, description="an adapter in SD_LORA_DIR applied over the base weights (None: none)"
    )
    scale: float = Field(1.0, description="how strongly the adapter applies")


class Rollout(BaseModel):
    """A model's versions and which of them requests get: a request naming no version gets the
    champion, or the challenger for `canary_percent` of such requests."""

    model_config = ConfigDict(extra="forbid")

    versions: dict[str, ModelVersion] = Field(
        default_factory=dict,
        description="versions by name (e.g. registry version numbers); empty: the model is "
        "unversioned",
    )
    champion: str | None = Field(None, description="the version requests get (default: first)")
    challenger: str | None = Field(None, description="the version on canary")
    canary_percent: float = Field(
        0.0, ge=0, le=100, description="share of unversioned requests the challenger gets"
    )

    @model_validator(mode="after")
    def _names_are_versions(self) -> Rollout:
        for name in self.versions:
            if not re.match(VERSION_NAME, name):
                raise ValueError(
                    f"version name {name!r} must be 1 to 63 letters, digits, '.', '_' or '-'"
                )
        for role in ("champion", "challenger"):
            chosen = getattr(self, role)
            if chosen is not None and chosen not in self.versions:
                known = ", ".join(self.versions) or "none"
                raise ValueError(f"{role} {chosen!r} is not a version (versions: {known})")
        if self.canary_percent > 0 and self.challenger is None:
            raise ValueError("canary_percent needs a challenger version")
        return self

    @property
    def champion_version(self) -> str | None:
        return self.champion or next(iter(self.versions), None)


class ModelSpec(BaseModel):
    """One served model: where it comes from, its defaults, and its stages' placement and
    scaling over the service-wide stage settings (e.g. {"unet": {"num_gpus": 1}})."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "embedded",
        description="'embedded' (the trained demo model), embedded-sd, -sd-v, -sd-turbo, -lcm, "
        "-sdxl, -sdxl-turbo (random-weight models built by this project), a local diffusers "
        "directory, or a Hugging Face Hub id",
    )
    defaults: ModelDefaults = ModelDefaults()
    rollout: Rollout = Rollout()
    text_encoder: dict[str, Any] = Field(default_factory=dict)
    unet: dict[str, Any] = Field(default_factory=dict)
    vae: dict[str, Any] = Field(default_factory=dict)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SD_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    # -- models
    model: str = Field(
        "embedded",
        description="one model's source (when `models` is empty): 'embedded' (the trained demo "
        "model committed with the code; /mnt/models instead when present), 'embedded-<family>' "
        "(random weights), a local diffusers directory, or a Hugging Face Hub id",
    )
    model_name: str = Field("sd-embedded", description="name the API reports for that model")
    models: dict[str, ModelSpec] = Field(
        default_factory=dict,
        description="several models by name (SD_MODELS as JSON), each with its own stages",
    )
    default_model: str | None = Field(
        None, description="the model of requests that name none (default: the first)"
    )
    rollout: Rollout = Field(
        Rollout(),
        description="that one model's versions, champion, challenger and canary_percent "
        '(SD_ROLLOUT as JSON, e.g. {"versions": {"1": {}, "2": {"adapter": "demo-v2"}}, '
        '"challenger": "2", "canary_percent": 10}); in `models`, each model\'s own',
    )
    kserve_model_dir: Path = Path("/mnt/models")
    lora_dir: Path | None = Field(
        None,
        description="LoRA adapters requests may apply: `<name>.safetensors` files (diffusers or "
        "kohya layout) or diffusers adapter folders; listed at GET /v1/loras",
    )
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    registry_uri: str | None = Field(
        None,
        description="MLflow tracking URI of the model registry `sd-serving tune --register` and "
        "`promote` use (default: sqlite:///<cache_dir>/registry/mlflow.db)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per replica")
    compile_mode: Literal[
        "auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = Field(
        "auto",
        description="torch.compile mode of the denoiser, compiled for every batch-size bucket at "
        "replica start; auto: reduce-overhead (CUDA graphs) on CUDA, off on CPU",
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="channels_last memory layout for the denoiser; auto: on with CUDA"
    )
    sdpa_attention: bool = Field(
        True,
        description="PyTorch's scaled-dot-product attention (flash / memory-efficient kernels); "
        "false: diffusers' plain attention",
    )
    compile_cache_dir: Path | None = Field(
        None,
        description="inductor's cache of compiled graphs, so a restarted replica loads them "
        "instead of compiling (default: <cache_dir>/torch-compile)",
    )

    # -- local service
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(9000, ge=1, le=65535)
    ray_temp_dir: Path = Path("/tmp/sd-serving-ray")
    drain_timeout_s: float = Field(
        20.0,
        gt=0,
        description="on SIGTERM: readiness answers not-ready at once, then requests in flight "
        "get this long to finish before the replicas stop (keep it under the pod's grace period)",
    )
    drain_marker: Path | None = Field(
        None,
        description="set by `sd-serving serve` (in its Ray session's folder): while this file "
        "exists the service is stopping and readiness answers not-ready",
    )
    metrics_port: int = Field(8080, ge=1, le=65535, description="port of Ray's /metrics endpoint")
    app_name: str = "sd-serving"
    access_log: bool = Field(
        False,
        description="Ray Serve's access log, a line per call from every replica (`sd-serving "
        "serve`); each line costs CPU in the replica, Ray's log monitor and the driver",
    )

    # -- access
    api_keys_file: Path | None = Field(
        None,
        description="file with one API key per line; when set, every route but health "
        "needs `Authorization: Bearer <key>`",
    )

    rate_limit_per_minute: float | None = Field(
        None,
        gt=0,
        description="requests per minute per API key (per client address without "
        "keys); None = no limit",
    )
    rate_limit_burst: int = Field(10, ge=1, description="requests a client may send at once")
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="longest a generation may take before 504; clients may ask for "
        "less with the X-Timeout-S header",
    )

    max_request_bytes: int = Field(
        1 << 20, ge=1024, description="largest HTTP request body accepted (413 above it)"
    )
    max_picture_request_bytes: int = Field(
        20 << 20,
        ge=1024,
        description="largest body of the routes that take pictures (edits: image and mask): "
        "/v1/generate, /v1/jobs, /v1/images/edits, KServe v1 predict and v2 infer",
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="origins browsers may call the API from (e.g. https://app.example.com, "
        "or * for any); empty = same origin only",
    )

    # -- async jobs
    max_jobs: int = Field(10_000, ge=1, description="jobs remembered; the oldest finished go first")
    max_feedback: int = Field(
        100_000,
        ge=1,
        description="feedback rows kept (`POST /v1/feedback`) for `sd-serving export-feedback`; "
        "the oldest go first",
    )
    job_ttl_s: float = Field(3600.0, gt=0, description="how long a finished job stays readable")
    job_workers: int = Field(
        8, ge=1, description="with Redis: jobs one ingress replica's worker runs at once"
    )
    job_lease_s: float = Field(
        30.0,
        gt=0,
        description="with Redis: a running job's lease, renewed while it runs; when its replica "
        "dies, another takes the job over this long after the last renewal",
    )
    job_max_attempts: int = Field(
        3,
        ge=1,
        description="with Redis: attempts of a job lost in a row (its replicas died) without "
        "getting past the previous attempt's checkpoints, before it fails",
    )
    job_checkpoint_steps: int = Field(
        5,
        ge=0,
        description="with Redis: a running job's denoising state is saved every this many steps "
        "(and after its last), so a job taken over resumes there; 0: never, a job reruns",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="key of the HMAC-SHA256 signature on job webhooks; webhooks are refused "
        "while it is unset",
    )
    webhook_timeout_s: float = Field(10.0, gt=0)
    webhook_attempts: int = Field(3, ge=1, description="deliveries tried before giving up")
    webhook_allow: list[str] = Field(
        default_factory=list,
        description="networks (CIDR) and host names webhooks may reach although they are "
        "loopback, link-local, private or otherwise internal (refused by default: SSRF); a JSON "
        'list, e.g. \'["10.20.0.0/16", "hooks.internal"]\'',
    )

    # -- request handling
    limits: Limits = Limits()
    defaults: Defaults = Defaults()

    # -- shared state
    redis_url: SecretStr | None = Field(
        None,
        description="Redis holding jobs, the result-cache index and rate-limit buckets for every "
        "ingress replica, surviving restarts (e.g. redis://:password@redis:6379/0); unset: kept "
        "in memory by one ResultStore replica and lost with it",
    )
    image_store_url: str | None = Field(
        None,
        description="where finished images are written, by digest (fsspec: file:///data/images, "
        "s3://bucket/images, gs://...); unset: in memory (SD_IMAGE_STORE_BYTES), or "
        "file://<cache_dir>/images with Redis",
    )
    image_retention_s: float = Field(
        7 * 86400.0,
        gt=0,
        description="how long an image stored by URL and its result-cache entry stay served "
        "(`sd-serving images purge` deletes older ones; use bucket lifecycle rules too)",
    )

    # -- results
    image_store_bytes: int = Field(
        256 * 2**20,
        ge=0,
        description="finished images kept in memory for /v1/images/{digest} (bytes), without "
        "SD_IMAGE_STORE_URL or Redis",
    )
    result_cache_size: int = Field(
        1024, ge=0, description="fully determined requests answered without the GPU stages"
    )
    public_base_url: str = Field(
        "", description="base of image URLs in answers (a CDN in front); '' = relative URLs"
    )

    # -- deployments (a class per stage, so SD_UNET__NUM_GPUS=1 keeps the UNet's other defaults)
    ingress: IngressStage = IngressStage()
    text_encoder: TextEncoderStage = TextEncoderStage()
    unet: UNetStage = UNetStage()
    vae: VAEStage = VAEStage()
    result_store: ResultStoreStage = ResultStoreStage()

    @model_validator(mode="before")
    @classmethod
    def _every_variable_names_a_setting(cls, data: Any) -> Any:
        check_environment(os.environ)
        return data

    @model_validator(mode="after")
    def _models_are_consistent(self) -> Settings:
        names = list(self.served_models())
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(
                f"default_model {self.default_model!r} is not a served model ({', '.join(names)})"
            )
        if self.models and self.rollout != Rollout():
            raise ValueError("rollout is the one model's; with `models`, give each its own rollout")
        for name in names:
            for stage in ("text_encoder", "unet", "vae"):
                self.stage(stage, name)  # a bad per-model override fails the start
        return self

    def served_models(self) -> dict[str, ModelSpec]:
        """The models by name: `models`, or the one that `model` and `model_name` describe."""
        return dict(self.models) or {
            self.model_name: ModelSpec(source=self.model, rollout=self.rollout)
        }

    def default_model_name(self) -> str:
        return self.default_model or next(iter(self.served_models()))

    def stage(self, stage: Stage, model: str | None = None) -> StageSettings:
        """A stage's settings, with the model's own overrides on top of the service-wide ones."""
        base: StageSettings = getattr(self, stage)
        overrides = {} if model is None else getattr(self.served_models()[model], stage, {})
        if not overrides:
            return base
        return type(base).model_validate({**base.model_dump(exclude_unset=True), **overrides})

    def http_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"

    def draining(self) -> bool:
        return self.drain_marker is not None and self.drain_marker.exists()


ENV_PREFIX = "SD_"
# Variables renamed when per-stage knobs moved under their stage: the start names the new one.
RENAMED = {
    "SD_UNET_MAX_BATCH_SIZE": "SD_UNET__MAX_BATCH_SIZE",
    "SD_UNET_MAX_QUEUE": "SD_UNET__MAX_QUEUE",
    "SD_EMBEDDING_CACHE_SIZE": "SD_TEXT_ENCODER__CACHE_SIZE",
    "SD_ENCODER_MAX_BATCH_SIZE": "SD_TEXT_ENCODER__MAX_BATCH_SIZE",
    "SD_ENCODER_BATCH_WAIT_S": "SD_TEXT_ENCODER__BATCH_WAIT_S",
    "SD_DECODER_MAX_BATCH_SIZE": "SD_VAE__MAX_BATCH_SIZE",
    "SD_DECODER_BATCH_WAIT_S": "SD_VAE__BATCH_WAIT_S",
}


def setting_variables() -> tuple[set[str], set[str]]:
    """Every variable that names a setting, and the prefixes under which any name is taken
    (free-form maps such as a stage's Ray `resources`)."""
    names: set[str] = set()
    prefixes: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for field_name, field in model.model_fields.items():
            name = f"{prefix}{field_name.upper()}"
            names.add(name)
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, name + "__")
            elif getattr(annotation, "__origin__", None) is dict:
                prefixes.add(name + "__")

    walk(Settings, ENV_PREFIX)
    return names, prefixes


def unknown_variables(environ: Mapping[str, str]) -> Iterator[str]:
    names, prefixes = setting_variables()
    for variable in environ:
        upper = variable.upper()
        if (
            upper.startswith(ENV_PREFIX)
            and upper not in names
            and not upper.startswith(tuple(prefixes))
        ):
            yield variable


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse `SD_*` variables that name no setting, naming the setting meant."""
    problems = []
    names, _ = setting_variables()
    for variable in sorted(unknown_variables(environ)):
        upper = variable.upper()
        if upper in RENAMED:
            hint = f"it was renamed {RENAMED[upper]}"
        else:
            close = difflib.get_close_matches(upper, sorted(names), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see README's settings table"
        problems.append(f"{variable} names no setting: {hint}")
    if problems:
        raise ValueError("; ".join(problems))
