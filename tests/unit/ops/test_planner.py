"""The capacity planner's maths against hand-computed cases."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from serving.cli.plan import GpuCosts, PlanRequest, RequestShape, erlang_c, p95_wait, plan_for_gpu

ROOT = Path(__file__).resolve().parents[3]


def test_erlang_c_matches_hand_computation() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # (a^2/2!)/(1-rho) / (1 + a + that)
    assert erlang_c(2, 0.5) == pytest.approx(0.1)
    assert erlang_c(3, 3.0) == 1.0  # saturated


def test_p95_wait_of_mm1_and_mmc() -> None:
    # M/M/1, lambda 0.5, mu 1: 0.5 * exp(-0.5 t) = 0.05  =>  t = 2 ln 10
    assert p95_wait(1, 0.5, 1.0) == pytest.approx(2 * math.log(10))
    # M/M/2, lambda 1, mu 2: C = 0.1  =>  0.1 * exp(-3 t) = 0.05  =>  t = ln 2 / 3
    assert p95_wait(2, 1.0, 0.5) == pytest.approx(math.log(2) / 3)
    assert p95_wait(4, 0.1, 1.0) == 0.0  # almost nobody waits
    assert p95_wait(1, 2.0, 1.0) == math.inf


def request(slo: float, rps: float = 1.0) -> PlanRequest:
    return PlanRequest(
        requests_per_s=rps,
        slo_p95_s=slo,
        mix=[RequestShape(width=512, height=512, steps=10)],
        gpus={
            "test-gpu": GpuCosts(
                unet_step_s=0.08,
                unet_step_s_batched=0.05,
                vae_decode_s=0.01,
                text_encode_s=0.01,
                memory_gib=24,
                price_per_hour=2.0,
            )
        },
    )


def test_loose_slo_keeps_one_unet_replica() -> None:
    result = plan_for_gpu(request(slo=10), "test-gpu")
    unet = {s.name: s for s in result.stages}["unet"]
    # service 10 x 0.05 = 0.5 s; M/M/1 with lambda 1, mu 2 waits ln(10) at p95; unloaded 0.8 s
    assert unet.replicas == 1
    assert unet.service_s == pytest.approx(0.5)
    assert unet.p95_s == pytest.approx(0.8 + math.log(10))
    assert result.feasible and result.gpus == 2  # 1 UNet + 0.25 VAE + 0.125 encoder, rounded up
    assert result.cost_per_hour == pytest.approx(4.0)


def test_tight_slo_adds_unet_replicas_until_it_fits() -> None:
    result = plan_for_gpu(request(slo=1.5), "test-gpu")
    unet = {s.name: s for s in result.stages}["unet"]
    assert unet.replicas == 2
    assert unet.p95_s == pytest.approx(0.8 + math.log(2) / 3)
    assert result.p95_s <= 1.5


def test_an_slo_below_the_unloaded_latency_is_infeasible() -> None:
    result = plan_for_gpu(request(slo=0.5), "test-gpu")
    assert not result.feasible
    assert "infeasible" in result.notes[0]


def test_larger_images_cost_in_proportion_to_pixels() -> None:
    big = request(slo=100).model_copy(
        update={"mix": [RequestShape(width=1024, height=1024, steps=10)]}
    )
    unet = {s.name: s for s in plan_for_gpu(big, "test-gpu").stages}["unet"]
    assert unet.service_s == pytest.approx(4 * 0.5)


def test_worked_example_answers_from_the_command_line() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "plan",
            str(ROOT / "loadtest/plans/sd15-512-a100-h100.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "== a100-80gb" in result.stdout and "== h100-80gb" in result.stdout
    assert "M/M/c per stage (Erlang C)" in result.stdout
    assert "not measured here" in result.stdout
