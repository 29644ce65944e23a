"""The promotion gate: a challenger becomes the champion only when it is no worse on any source
of the validation set it was tuned against, and no worse live (error ratio, p95 time) than the
champion it would replace, as Prometheus saw the two serve side by side on canary.

Served version names are the registry's version numbers (`"versions": {"1": ..., "2": ...}` in
the model's rollout), so the registry's version and Prometheus's `version` label agree."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import httpx

from serving.training.registry import Version


@dataclass(frozen=True)
class GateLimits:
    max_source_drop: float = 2.0  # points of adherence a source may lose
    max_error_increase: float = 1.0  # points of failed generations above the champion's
    max_latency_ratio: float = 1.25  # challenger's p95 over the champion's
    min_requests: float = 20.0  # the challenger's generations in the window, to judge at all
    window: str = "30m"


@dataclass(frozen=True)
class Live:
    """One version's generations in the window, as Prometheus counted them."""

    requests: float
    failures: float
    p95_s: float  # NaN without a finished generation

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass
class Verdict:
    promote: bool = True
    reasons: list[str] = field(default_factory=list)  # what regressed, each naming its signal
    lines: list[str] = field(default_factory=list)  # every comparison made

    def refuse(self, reason: str) -> None:
        self.promote = False
        self.reasons.append(reason)


class PrometheusError(RuntimeError):
    """Prometheus could not be read, or refused a query."""


def compare_sources(champion: Version, challenger: Version, limits: GateLimits) -> Verdict:
    """Per-source adherence: the challenger's against its parent's on the same validation set
    when its parent is the champion, else against the champion's own figures."""
    verdict = Verdict()
    baseline = challenger.parent_sources
    if challenger.parent != champion.version or not baseline:
        baseline = champion.sources
    for source, figures in sorted(baseline.items()):
        before = figures["mean"] * 100
        if source not in challenger.sources:
            verdict.refuse(f"source {source}: the challenger has no figures for it")
            continue
        after = challenger.sources[source]["mean"] * 100
        verdict.lines.append(f"source {source}: {before:.1f} % → {after:.1f} %")
        if before - after > limits.max_source_drop:
            verdict.refuse(
                f"source {source} regressed: adherence {after:.1f} % against the champion's "
                f"{before:.1f} % (at most {limits.max_source_drop:g} points lower)"
            )
    for source in sorted(set(challenger.sources) - set(baseline)):
        after = challenger.sources[source]["mean"] * 100
        verdict.lines.append(f"source {source} (new): {after:.1f} %")
    return verdict


def live(prometheus: str, model: str, version: str, window: str, at: float) -> Live:
    """A served version's generations, failures and p95 over the window ending at `at` (unix
    seconds). Every query is evaluated at that one instant: queries a moment apart extrapolate
    their windows differently, and the failures could come out above the generations."""
    selector = f'model="{model}",version="{version}"'
    requests = _scalar(
        prometheus, f"sum(increase(ray_sd_model_requests_total{{{selector}}}[{window}]))", at
    )
    failures = _scalar(
        prometheus,
        f'sum(increase(ray_sd_model_requests_total{{{selector},outcome!="ok"}}[{window}]))',
        at,
    )
    p95 = _scalar(
        prometheus,
        "histogram_quantile(0.95, sum by (le) "
        f"(increase(ray_sd_model_request_seconds_bucket{{{selector}}}[{window}])))",
        at,
    )
    return Live(requests or 0.0, failures or 0.0, math.nan if p95 is None else p95)


def compare_live(champion: Live, challenger: Live, limits: GateLimits, verdict: Verdict) -> None:
    """The challenger's live error ratio and p95 against the champion's."""
    window = limits.window
    verdict.lines.append(
        f"live over {window}: champion {champion.requests:.0f} generations, "
        f"{_percent(champion.error_ratio)} failed, p95 {champion.p95_s:.2f} s; challenger "
        f"{challenger.requests:.0f}, {_percent(challenger.error_ratio)} failed, p95 "
        f"{challenger.p95_s:.2f} s"
    )
    if challenger.requests < limits.min_requests:
        verdict.refuse(
            f"live traffic: the challenger served {challenger.requests:.0f} generations in the "
            f"last {window}, fewer than the {limits.min_requests:g} needed to judge it (raise "
            "its canary_percent, or wait)"
        )
        return
    increase = (challenger.error_ratio - champion.error_ratio) * 100
    if increase > limits.max_error_increase:
        verdict.refuse(
            f"error ratio regressed: {_percent(challenger.error_ratio)} of the challenger's "
            f"generations failed against the champion's {_percent(champion.error_ratio)} (at most "
            f"{limits.max_error_increase:g} points more)"
        )
    if math.isnan(challenger.p95_s):
        verdict.refuse("p95 latency: the challenger finished no generation in the window")
    elif not math.isnan(champion.p95_s) and champion.p95_s > 0:
        ratio = challenger.p95_s / champion.p95_s
        if ratio > limits.max_latency_ratio:
            verdict.refuse(
                f"p95 latency regressed: {challenger.p95_s:.2f} s against the champion's "
                f"{champion.p95_s:.2f} s ({ratio:.2f}x; at most {limits.max_latency_ratio:g}x)"
            )


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.1f} %"


def _scalar(prometheus: str, query: str, at: float) -> float | None:
    """An instant query's one value at `at`; None when it matched no series."""
    try:
        answer = httpx.get(
            prometheus.rstrip("/") + "/api/v1/query",
            params={"query": query, "time": f"{at:.3f}"},
            timeout=30,
        )
        body = answer.json()
    except (httpx.HTTPError, ValueError) as error:
        raise PrometheusError(f"cannot read Prometheus at {prometheus}: {error}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"Prometheus refused {query!r}: {body.get('error')}")
    result = body["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value
