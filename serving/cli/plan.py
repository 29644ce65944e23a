"""`sd-serving plan`: turn per-stage costs and a target load into hardware.

Queueing model (stated in every answer): each stage is an M/M/c queue — Poisson arrivals,
exponential service with the traffic mix's mean service time, c replicas. Capacity uses the
throughput cost (per image-step at the engine's batch size); the p95 wait comes from the
Erlang-C tail P(W > t) = C(c, a) * exp(-(c*mu - lambda) * t), and the p95 of a stage is its
unloaded latency (batch-1 cost) plus that wait. The smallest replica counts whose summed stage
p95 meets the SLO are chosen, growing the stage with the largest p95 first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

REFERENCE_PIXELS = 512 * 512
MODEL = (
    "M/M/c per stage (Erlang C): p95 = unloaded latency + p95 wait, "
    "P(W > t) = C(c, a) * exp(-(c*mu - lambda) * t); capacity from batched throughput cost"
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestShape(Strict):
    width: int = Field(512, ge=8)
    height: int = Field(512, ge=8)
    steps: int = Field(30, ge=1)
    images: int = Field(1, ge=1)
    weight: float = Field(1.0, gt=0)

    @property
    def area_ratio(self) -> float:
        return self.width * self.height / REFERENCE_PIXELS


class GpuCosts(Strict):
    """Per-stage costs on one GPU type, at 512x512 (scaled by pixel count for other sizes)."""

    unet_step_s: float = Field(gt=0, description="one step of one image, batch 1, CFG on")
    unet_step_s_batched: float = Field(gt=0, description="per image-step at the batch size")
    vae_decode_s: float = Field(gt=0, description="decoding one image")
    text_encode_s: float = Field(gt=0, description="encoding one prompt (+ negative prompt)")
    memory_gib: float = Field(gt=0)
    price_per_hour: float | None = Field(None, ge=0)
    source: str = "unspecified"


class ModelFootprint(Strict):
    weights_gib: float = Field(2.6, gt=0, description="all components at serving precision")
    unet_weights_gib: float = Field(1.7, gt=0)
    activation_gib_per_image: float = Field(
        0.6, ge=0, description="UNet activations per image at 512x512"
    )
    embedding_bytes: int = Field(77 * 768 * 2, description="one prompt's embeddings on the wire")
    image_bytes_per_pixel: float = Field(1.5, gt=0, description="encoded PNG/WebP size per pixel")


class PlanRequest(Strict):
    requests_per_s: float = Field(gt=0)
    slo_p95_s: float = Field(gt=0)
    mix: list[RequestShape] = Field(min_length=1)
    gpus: dict[str, GpuCosts] = Field(min_length=1)
    model: ModelFootprint = ModelFootprint()
    unet_batch_size: int = Field(8, ge=1)
    vae_gpu_share: float = Field(0.25, gt=0, le=1)
    text_encoder_gpu_share: float = Field(0.125, gt=0, le=1)


@dataclass(frozen=True)
class StagePlan:
    name: str
    arrival_rate: float  # work items per second
    service_s: float  # mean service time per item (throughput cost)
    unloaded_s: float  # latency of one item with no queue
    replicas: int
    utilisation: float
    p95_s: float


@dataclass
class GpuPlan:
    gpu: str
    feasible: bool
    stages: list[StagePlan]
    gpus: float
    p95_s: float
    memory_per_unet_gpu_gib: float
    storage_gib_per_node: float
    network_bytes_per_s: dict[str, float]
    cost_per_hour: float | None
    notes: list[str] = field(default_factory=list)


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits, for `servers` servers and offered load a = lambda/mu."""
    if offered_load >= servers:
        return 1.0
    term = 1.0
    total = 1.0  # k = 0
    for k in range(1, servers):
        term *= offered_load / k
        total += term
    last = term * offered_load / servers / (1 - offered_load / servers)
    return last / (total + last)


def p95_wait(servers: int, arrival_rate: float, service_s: float) -> float:
    """95th percentile of the waiting time in M/M/c; infinity when the queue is unstable."""
    mu = 1 / service_s
    if arrival_rate >= servers * mu:
        return math.inf
    waiting = erlang_c(servers, arrival_rate * service_s)
    if waiting <= 0.05:
        return 0.0
    return math.log(waiting / 0.05) / (servers * mu - arrival_rate)


def _stage(name: str, rate: float, service_s: float, unloaded_s: float, replicas: int) -> StagePlan:
    wait = p95_wait(replicas, rate, service_s)
    return StagePlan(
        name,
        rate,
        service_s,
        unloaded_s,
        replicas,
        utilisation=rate * service_s / replicas,
        p95_s=unloaded_s + wait,
    )


def plan_for_gpu(request: PlanRequest, gpu: str) -> GpuPlan:
    costs = request.gpus[gpu]
    total_weight = sum(shape.weight for shape in request.mix)
    share = [shape.weight / total_weight for shape in request.mix]
    images_per_request = sum(p * s.images for p, s in zip(share, request.mix, strict=True))
    image_rate = request.requests_per_s * images_per_request

    def per_image(cost: float, with_steps: bool) -> float:
        weighted = sum(
            p * s.images * cost * s.area_ratio * (s.steps if with_steps else 1)
            for p, s in zip(share, request.mix, strict=True)
        )
        return weighted / images_per_request

    demands = {
        "text_encoder": (request.requests_per_s, costs.text_encode_s, costs.text_encode_s),
        "unet": (
            image_rate,
            per_image(costs.unet_step_s_batched, True),
            per_image(costs.unet_step_s, True),
        ),
        "vae": (
            image_rate,
            per_image(costs.vae_decode_s, False),
            per_image(costs.vae_decode_s, False),
        ),
    }
    replicas = {
        name: max(1, math.floor(rate * service) + 1) for name, (rate, service, _) in demands.items()
    }

    def build() -> list[StagePlan]:
        return [_stage(name, *demands[name], replicas[name]) for name in demands]

    stages = build()
    feasible = sum(s.unloaded_s for s in stages) <= request.slo_p95_s
    while feasible and sum(s.p95_s for s in stages) > request.slo_p95_s:
        worst = max(stages, key=lambda s: s.p95_s - s.unloaded_s)
        if worst.p95_s - worst.unloaded_s <= 1e-9:
            break
        replicas[worst.name] += 1
        stages = build()

    by_name = {s.name: s for s in stages}
    gpus = (
        by_name["unet"].replicas
        + by_name["vae"].replicas * request.vae_gpu_share
        + by_name["text_encoder"].replicas * request.text_encoder_gpu_share
    )
    largest_area = max(s.area_ratio for s in request.mix)
    unet_memory = (
        request.model.unet_weights_gib
        + request.unet_batch_size * request.model.activation_gib_per_image * largest_area
    )
    pixels_per_image = (
        sum(p * s.images * s.width * s.height for p, s in zip(share, request.mix, strict=True))
        / images_per_request
    )
    latent_bytes = pixels_per_image / 64 * 4 * 4  # 4 float32 channels at 1/8 scale
    network = {
        "egress_images": image_rate * pixels_per_image * request.model.image_bytes_per_pixel,
        "ingress_requests": request.requests_per_s * 1024,
        "between_stages": request.requests_per_s * 2 * request.model.embedding_bytes
        + image_rate * 2 * latent_bytes,
    }
    notes = []
    if not feasible:
        notes.append(
            f"infeasible: the unloaded latency ({sum(s.unloaded_s for s in stages):.2f} s) "
            f"already exceeds the {request.slo_p95_s} s SLO on {gpu}"
        )
    if unet_memory > costs.memory_gib:
        notes.append(
            f"UNet at batch {request.unet_batch_size} needs {unet_memory:.1f} GiB, more than "
            f"the {costs.memory_gib} GiB of {gpu}: lower the batch size"
        )
    gpu_count = math.ceil(gpus)
    return GpuPlan(
        gpu=gpu,
        feasible=feasible and unet_memory <= costs.memory_gib,
        stages=stages,
        gpus=gpu_count,
        p95_s=sum(s.p95_s for s in stages),
        memory_per_unet_gpu_gib=unet_memory,
        storage_gib_per_node=request.model.weights_gib * 2 + 20,
        network_bytes_per_s=network,
        cost_per_hour=None if costs.price_per_hour is None else gpu_count * costs.price_per_hour,
        notes=notes,
    )


def plan(request: PlanRequest) -> list[GpuPlan]:
    return [plan_for_gpu(request, gpu) for gpu in request.gpus]


def load_request(path: Path, overrides: dict[str, Any] | None = None) -> PlanRequest:
    data = yaml.safe_load(path.read_text())
    data.update(overrides or {})
    return PlanRequest.model_validate(data)


def report(request: PlanRequest, plans: list[GpuPlan]) -> str:
    lines = [
        f"target: {request.requests_per_s:g} requests/s, p95 SLO {request.slo_p95_s:g} s, "
        f"{len(request.mix)} request shape(s)",
        f"model: {MODEL}",
        "",
    ]
    for result in plans:
        status = "meets the SLO" if result.feasible else "does NOT meet the SLO"
        lines.append(f"== {result.gpu} ({request.gpus[result.gpu].source}): {status}")
        for stage in result.stages:
            lines.append(
                f"  {stage.name:<13} replicas {stage.replicas:>4}  utilisation "
                f"{stage.utilisation:5.0%}  service {stage.service_s * 1000:8.1f} ms  "
                f"p95 {stage.p95_s:7.2f} s"
            )
        lines.append(
            f"  GPUs {result.gpus:g} (UNet 1 per replica, VAE {request.vae_gpu_share:g}, "
            f"text encoder {request.text_encoder_gpu_share:g} per replica); end-to-end p95 "
            f"{result.p95_s:.2f} s"
        )
        lines.append(
            f"  memory per UNet GPU {result.memory_per_unet_gpu_gib:.1f} GiB of "
            f"{request.gpus[result.gpu].memory_gib:g}; storage per node "
            f"{result.storage_gib_per_node:.0f} GiB"
        )
        net = result.network_bytes_per_s
        lines.append(
            f"  network: images out {net['egress_images'] * 8 / 1e6:.1f} Mbit/s, requests in "
            f"{net['ingress_requests'] * 8 / 1e6:.2f} Mbit/s, between stages "
            f"{net['between_stages'] * 8 / 1e6:.1f} Mbit/s"
        )
        if result.cost_per_hour is not None:
            unet = next(stage for stage in result.stages if stage.name == "unet")
            per_image = result.cost_per_hour / 3600 / max(unet.arrival_rate, 1e-9)
            lines.append(
                f"  cost {result.cost_per_hour:.2f}/hour, {per_image * 1000:.3f} per 1000 images"
            )
        lines.extend(f"  note: {note}" for note in result.notes)
        lines.append("")
    return "\n".join(lines)
