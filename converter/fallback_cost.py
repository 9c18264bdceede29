"""Cost-aware float fallback: keep in float the layers that buy the most fidelity per byte and per
millisecond, within a budget over the pure int8 model.

Each candidate layer (the worst by their own quantization error, converter.fallback.layer_errors)
is kept in float alone, and the model's *output* is compared with the float model's on validation
data (KL divergence for a classifier, the task's drop otherwise): its gain is how much of the int8
model's divergence that removes. Its cost is the bytes it adds (measured) and the latency it adds,
estimated from its multiply-accumulates and the float model's latency over the int8 one's. Candidates are taken greedily by gain per cost while
the sum stays within the budget; then the fewest of them that pass the accuracy gate are found by
doubling and bisection (converter.fallback.select_fewest). Every model tried is a frontier point.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converter.data import Dataset
from converter.fallback import LayerError, layer_errors, select_fewest
from converter.graph import op_macs
from converter.quantize import requantize
from converter.tasks.base import AccuracyReport, Task
from firmware_profiles import Profile

logger = logging.getLogger(__name__)

# What a float multiply-accumulate costs over an int8 one, in int8 MACs: measured as the float
# model's p50 latency over the pure int8 one's on this host (timed interleaved, 20 runs), at least
# MIN_FLOAT_MAC_EXTRA (QUANTIZE/DEQUANTIZE around a float layer are not free either).
MIN_FLOAT_MAC_EXTRA = 0.25
LATENCY_RUNS = 20
MAX_CANDIDATES = 32
DEFAULT_MAX_TRIES = 16
_EPS = 1e-9


@dataclass(frozen=True)
class Budget:
    """The most the fallback may add over the pure int8 model, as fractions of it."""

    size: float
    latency: float

    @classmethod
    def of(cls, profile: Profile, override: tuple[float, float] | None = None) -> Budget:
        if override is not None:
            return cls(*override)
        q = profile.quantization
        return cls(q.fallback_size_budget, q.fallback_latency_budget)

    def describe(self) -> str:
        return f"{self.size:.0%} size, {self.latency:.0%} latency over pure int8"

    def holds(self, size_cost: float, latency_cost: float) -> bool:
        return size_cost <= self.size + _EPS and latency_cost <= self.latency + _EPS


@dataclass(frozen=True)
class Candidate:
    """One layer kept in float alone: what it buys (gain) and what it costs."""

    layer: LayerError
    gain: float  # output divergence removed (int8's minus this model's)
    size_cost: float  # bytes added, as a fraction of the pure int8 model
    latency_cost: float  # latency added, estimated, as a fraction of the pure int8 model's

    @property
    def score(self) -> float:
        return self.gain / (self.size_cost + self.latency_cost + 1e-4)


@dataclass(frozen=True)
class Point:
    """One model tried: the frontier the user sees."""

    float_layers: int
    metric: float
    drop: float
    size_ratio: float  # over pure int8
    latency_ratio: float  # estimated latency over pure int8
    in_budget: bool
    passed: bool


@dataclass
class CostAwareResult:
    passed: bool
    kept: list[Candidate]
    model: bytes | None  # the passing model; else the best in-budget one (written only if forced)
    accuracy: AccuracyReport | None
    budget: Budget
    candidates: list[Candidate] = field(default_factory=list)  # by score, best first
    frontier: list[Point] = field(default_factory=list)
    reason: str = ""

    @property
    def float_layers(self) -> list[LayerError]:
        return [c.layer for c in self.kept]

    @property
    def ranking(self) -> list[LayerError]:
        return [c.layer for c in self.candidates]


def measure_candidates(
    calibrated: bytes,
    ranking: list[LayerError],
    plain: bytes,
    profile: Profile,
    task: Task,
    divergence: Callable[[bytes], float],
    float_mac_extra: float,
    limit: int = MAX_CANDIDATES,
) -> list[Candidate]:
    """Each of the first `limit` layers kept in float alone; best gain per cost first."""
    macs = op_macs(calibrated)
    total = max(sum(macs.values()), 1)
    base = divergence(plain)
    out = []
    for e in ranking[:limit]:
        model = requantize(calibrated, profile, task, [e.node])
        out.append(
            Candidate(
                e,
                gain=base - divergence(model),
                size_cost=max(len(model) - len(plain), 0) / len(plain),
                latency_cost=float_mac_extra * macs.get(e.node, 0) / total,
            )
        )
    return sorted(out, key=lambda c: (-c.score, c.layer.node))


def within_budget(candidates: list[Candidate], budget: Budget) -> list[Candidate]:
    """Greedy: by score, every candidate that buys something and still fits the budget."""
    picked: list[Candidate] = []
    size = lat = 0.0
    for c in candidates:
        if c.gain <= 0 or not budget.holds(size + c.size_cost, lat + c.latency_cost):
            continue
        picked.append(c)
        size, lat = size + c.size_cost, lat + c.latency_cost
    return picked


def search(
    calibrated: bytes,
    candidates: list[Candidate],
    plain: bytes,
    plain_accuracy: AccuracyReport,
    profile: Profile,
    task: Task,
    budget: Budget,
    evaluate: Callable[[bytes], AccuracyReport],
    on_attempt: Callable[[int], None] | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> CostAwareResult:
    """The fewest in-budget candidates that pass the accuracy gate, and every point tried."""
    limit = profile.budgets.max_accuracy_drop
    frontier = [Point(0, plain_accuracy.quant_value, plain_accuracy.drop, 1.0, 1.0, True, False)]
    tried: dict[tuple[str, ...], tuple[bytes, AccuracyReport, bool]] = {}

    def passes(chosen: list[Candidate]) -> bool:
        if on_attempt:
            on_attempt(len(chosen))
        model = requantize(calibrated, profile, task, [c.layer.node for c in chosen])
        report = evaluate(model)
        size_cost = len(model) / len(plain) - 1.0
        lat_cost = sum(c.latency_cost for c in chosen)
        fits = budget.holds(size_cost, lat_cost)
        ok = fits and report.drop <= limit + 1e-12
        frontier.append(
            Point(
                len(chosen), report.quant_value, report.drop, 1 + size_cost, 1 + lat_cost, fits, ok
            )
        )
        tried[tuple(c.layer.node for c in chosen)] = (model, report, fits)
        logger.info(
            "fallback, %d float layers: drop %.4f, size x%.3f",
            len(chosen),
            report.drop,
            1 + size_cost,
        )
        return ok

    picked = within_budget(candidates, budget)
    chosen = select_fewest(picked, passes, max_tries) if picked else None
    result = CostAwareResult(False, [], None, None, budget, candidates, frontier)
    if chosen is not None:
        model, report, _ = tried[tuple(c.layer.node for c in chosen)]
        result.passed, result.kept, result.model, result.accuracy = True, chosen, model, report
        return result
    return _best_in_budget(result, picked, tried, plain_accuracy, limit)


def _best_in_budget(
    result: CostAwareResult,
    picked: list[Candidate],
    tried: dict[tuple[str, ...], tuple[bytes, AccuracyReport, bool]],
    plain_accuracy: AccuracyReport,
    limit: float,
) -> CostAwareResult:
    """No set passed: the best in-budget model tried (if better than int8), and why it failed."""
    best = min(
        ((k, v) for k, v in tried.items() if v[2]), key=lambda kv: kv[1][1].drop, default=None
    )
    drop_note = f"pure int8 drops {plain_accuracy.drop:.2%}"
    if best is not None and best[1][1].drop < plain_accuracy.drop:
        nodes, (model, report, _) = best
        result.kept = [c for c in picked if c.layer.node in nodes]
        result.model, result.accuracy = model, report
        drop_note = (
            f"the best in budget keeps {len(nodes)} layer(s) in float and drops {report.drop:.2%}"
        )
    result.reason = (
        f"the accuracy gate (drop ≤ {limit:.2%}) cannot be met within the float-fallback budget "
        f"({result.budget.describe()}): {drop_note}"
    )
    return result


def head(data: Dataset, n: int) -> Dataset:
    """The first n samples of a dataset, with their labels (class indices or boxes)."""
    labels = data.labels
    if isinstance(labels, dict):
        labels = {
            k: v[:n] if isinstance(v, np.ndarray) and len(v) == len(data.x) else v
            for k, v in labels.items()
        }
    elif hasattr(labels, "boxes") and hasattr(labels, "classes"):
        labels = dataclasses.replace(labels, boxes=labels.boxes[:n], classes=labels.classes[:n])
    return dataclasses.replace(data, x=data.x[:n], labels=labels)


def float_mac_extra(float_model: bytes, plain: bytes, profile: Profile) -> float:
    """The float model's latency over the pure int8 one's, less one (see MIN_FLOAT_MAC_EXTRA)."""
    from converter.gates import host_threads, measure_latency, withholds_amx

    lat = measure_latency(
        {"float": float_model, "int8": plain},
        threads=host_threads(profile.runtime.threads),
        runs=LATENCY_RUNS,
        warmup=3,
        withhold_amx=withholds_amx(profile),
    )
    ratio = lat["float"].p50 / lat["int8"].p50 if lat["int8"].p50 > 0 else 2.0
    logger.info("float/int8 latency on this host: %.2f", ratio)
    return max(ratio - 1.0, MIN_FLOAT_MAC_EXTRA)


def find_float_layers_within_budget(
    saved_model: Path,
    profile: Profile,
    task: Task,
    calibration: Dataset,
    float_model: bytes,
    plain: bytes,
    plain_accuracy: AccuracyReport,
    budget: Budget,
    evaluate: Callable[[bytes], AccuracyReport],
    divergence: Callable[[bytes], float],
    on_attempt: Callable[[int], None] | None = None,
    calibrated: bytes | None = None,
) -> CostAwareResult:
    """Rank layers by gain per cost, then search within the budget (see the module's docstring).
    `calibrated`: the calibrated model `plain` was quantized from (with refined activation
    ranges, converter.activation_ranges); default: the one the layer-error ranking calibrates."""
    if budget.size <= 0 and budget.latency <= 0:  # no float layer fits: nothing to measure
        return search(b"", [], plain, plain_accuracy, profile, task, budget, evaluate, on_attempt)
    debugged, ranking = layer_errors(saved_model, profile, task, calibration)
    calibrated = calibrated or debugged
    extra = float_mac_extra(float_model, plain, profile)
    candidates = measure_candidates(calibrated, ranking, plain, profile, task, divergence, extra)
    logger.info(
        "fallback candidates: %s",
        ", ".join(
            f"{c.layer.label} gain {c.gain:.3g} size +{c.size_cost:.1%}" for c in candidates[:8]
        ),
    )
    return search(
        calibrated, candidates, plain, plain_accuracy, profile, task, budget, evaluate, on_attempt
    )
