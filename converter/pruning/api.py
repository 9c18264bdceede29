"""The library entry points: prune a model by a channel ratio (optionally in steps with distillation
fine-tuning), or by a device profile's pruning target (channels, MACs or latency)."""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.pruning.distill import FineTuneResult, distill
from converter.pruning.graph import PruningError
from converter.pruning.macs import ModelCost, model_cost
from converter.pruning.plan import KeptWhole, Planner, PrunePlan
from converter.pruning.rebuild import rebuild

logger = logging.getLogger(__name__)

# Rough int8 throughput per thread, in MACs per millisecond, for the MAC cost model used when the
# host cannot stand for the device. Order-of-magnitude figures; the report says it is an estimate.
_MACS_PER_MS_PER_THREAD = {
    "cortex-a53": 1.5e6,
    "cortex-a55": 2.0e6,
    "cortex-a57": 2.5e6,
    "cortex-a72": 4.0e6,
    "cortex-a76": 10.0e6,
    "x86-64-v3": 40.0e6,
    "esp32-s3": 0.03e6,
    "edgetpu-host": 100.0e6,  # the Edge TPU does the work; one "thread"
}
_DEFAULT_MACS_PER_MS = 2.0e6


@dataclass
class PruneReport:
    ratio: (
        float  # fraction of channels removed, as asked of the plan (last step, relative to start)
    )
    before: ModelCost
    after: ModelCost
    predicted_macs: int  # the graph analysis' prediction for the final model
    importance: str
    steps: int = 1
    kept_whole: list[KeptWhole] = field(default_factory=list)
    unsupported: list[KeptWhole] = field(default_factory=list)
    groups: int = 0
    channels_before: int = 0
    channels_after: int = 0
    fine_tune: list[FineTuneResult] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)  # method, ms before/after, budget
    notes: list[str] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        return self.after.macs / self.before.macs if self.before.macs else 1.0

    @property
    def removed_fraction(self) -> float:
        """Prunable channels really removed: below `ratio` where minimums or rounding keep more."""
        return 1 - self.channels_after / self.channels_before if self.channels_before else 0.0


def prune(
    model: Any,
    ratio: float,
    *,
    importance: str = "l1",
    mode: str = "uniform",
    min_channels: int = 8,
    round_to: int = 1,
    protect: Sequence[str] = (),
    per_layer: dict[str, float] | None = None,
    data: np.ndarray | None = None,
    labels: Any = None,
    steps: int = 1,
    epochs: int = 0,
    teacher: Any = None,
    checkpoint: Path | None = None,
    **fine_tune: Any,
) -> tuple[Any, PruneReport]:
    """Remove `ratio` of the channels in `steps` steps; with data and epochs, each step is followed
    by a distillation fine-tune against `teacher` (default: the original model)."""
    teacher = teacher or model
    steps = max(1, int(steps))
    before = model_cost(model)
    current = model
    report: PruneReport | None = None
    results: list[FineTuneResult] = []
    first_plan: PrunePlan | None = None
    for step in range(1, steps + 1):
        planner = Planner(
            current,
            importance_method=importance,
            mode=mode,
            min_channels=min_channels,
            round_to=round_to,
            protected=protect,
            data=data,
            labels=labels,
            loss_fn=fine_tune.get("task_loss"),
        )
        plan = planner.plan(_step_ratio(ratio, step, steps), per_layer if step == 1 else None)
        first_plan = first_plan or plan
        current = rebuild(plan)
        if data is not None and epochs > 0:
            label = f"step {step}/{steps} fine-tune" if steps > 1 else "fine-tune"
            tuned = distill(
                current,
                teacher,
                data,
                labels,
                epochs=epochs,
                checkpoint=checkpoint,
                label=label,
                **fine_tune,
            )
            results.append(tuned)
        report = _report(ratio, before, current, plan, first_plan, importance, steps, results)
    assert report is not None
    return current, report


def _step_ratio(ratio: float, step: int, steps: int) -> float:
    """The fraction of what is left that this step removes, so the steps reach `ratio` in all."""
    done, target = ratio * (step - 1) / steps, ratio * step / steps
    return 1 - (1 - target) / (1 - done) if target < 1 else target


def _report(
    ratio: float,
    before: ModelCost,
    pruned: Any,
    plan: PrunePlan,
    first_plan: PrunePlan,
    importance: str,
    steps: int,
    results: list[FineTuneResult],
) -> PruneReport:
    """The report after a step: costs against the original, groups and kept layers of the first plan."""
    return PruneReport(
        ratio=ratio,
        before=before,
        after=model_cost(pruned),
        predicted_macs=plan.predicted_macs,
        importance=importance,
        steps=steps,
        kept_whole=first_plan.kept_whole(),
        unsupported=first_plan.unsupported(),
        groups=len(first_plan.groups),
        channels_before=first_plan.total_channels,
        channels_after=plan.kept_channels,
        fine_tune=results,
    )


def _search_ratio(planner: Planner, fits: Any, hi: float = 0.95, iterations: int = 12) -> float:
    """Smallest ratio (to 1/2^iterations) whose plan satisfies `fits(plan)`; hi if none does."""
    if fits(planner.plan(0.0)):
        return 0.0
    lo = 0.0
    if not fits(planner.plan(hi)):
        return hi
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if fits(planner.plan(mid)):
            hi = mid
        else:
            lo = mid
    return hi


def cost_model_macs_per_ms(profile: Any) -> float:
    per_thread = _MACS_PER_MS_PER_THREAD.get(profile.target.cpu, _DEFAULT_MACS_PER_MS)
    threads = 1 if profile.target.accelerator else profile.runtime.threads
    return per_thread * threads


def prune_for_profile(
    model: Any,
    target: Any,
    data: np.ndarray | None = None,
    labels: Any = None,
    *,
    profile: Any = None,
    importance: str = "l1",
    protect: Sequence[str] = (),
    steps: int = 1,
    epochs: int = 0,
    calibration: np.ndarray | None = None,
    measure: bool | None = None,
    **fine_tune: Any,
) -> tuple[Any, PruneReport]:
    """Prune to a firmware_profiles.schema.PruningTarget: a channel fraction, a MAC budget, or a
    latency budget. For latency, the int8 model is timed on this host when platform.machine() is in
    profile.target.host_match (or measure=True); otherwise a MAC cost model estimates it. The
    report's `latency["method"]` says which. A MAC or latency budget that even the furthest
    pruning searched cannot meet raises PruningError before any fine-tuning."""
    planner = Planner(
        model, importance_method=importance, min_channels=target.min_channels, round_to=target.round_to,
        protected=protect, data=data, labels=labels, loss_fn=fine_tune.get("task_loss"),
    )  # fmt: skip
    latency: dict[str, Any] = {}
    if target.channels is not None:
        ratio = float(target.channels)
    elif target.macs is not None:
        ratio = _ratio_for_macs(planner, target)
    else:
        if profile is None:
            raise ValueError("a latency target needs the profile (for host_match, threads and cpu)")
        ratio, latency = _ratio_for_latency(model, planner, target, profile, calibration, measure)
    pruned, report = prune(
        model,
        ratio,
        importance=importance,
        min_channels=target.min_channels,
        round_to=target.round_to,
        protect=protect,
        data=data,
        labels=labels,
        steps=steps,
        epochs=epochs,
        **fine_tune,
    )
    report.latency = latency
    return pruned, report


def _ratio_for_macs(planner: Planner, target: Any) -> float:
    """The least pruning that meets the MAC budget; PruningError when none searched does."""
    ratio = _search_ratio(planner, lambda p: p.predicted_macs <= target.macs)
    furthest = planner.plan(ratio)
    if furthest.predicted_macs > target.macs:
        raise PruningError(
            f"MAC budget {target.macs:,} is out of pruning's reach: with {ratio:.0%} of channels "
            f"removed and {target.min_channels} kept per layer the model still has "
            f"{furthest.predicted_macs:,} MACs (dense {furthest.dense_macs:,}); raise pruning.macs, lower "
            "pruning.min_channels, or set pruning.channels instead"
        )
    return ratio


def _ratio_for_latency(
    model: Any,
    planner: Planner,
    target: Any,
    profile: Any,
    calibration: np.ndarray | None,
    measure: bool | None,
) -> tuple[float, dict[str, Any]]:
    """The least pruning that meets the latency budget, measured on this host when it stands for
    the device (or measure=True), else estimated by the MAC cost model; PruningError when none
    searched does."""
    host = platform.machine()
    if measure is None:
        measure = host in profile.target.host_match
    if measure:
        from converter.gates import host_cpu, withholds_amx

        ratio, latency = _search_latency(
            model, planner, target.latency_ms, profile.runtime.threads, calibration,
            withholds_amx(profile),
        )  # fmt: skip
        latency["method"] = (
            f"measured int8 latency on this host ({host_cpu(profile)}, {profile.runtime.threads} threads)"
        )
    else:
        ratio, latency = _estimate_latency(planner, target, profile, host)
    if latency["pruned_ms"] > target.latency_ms:
        raise PruningError(
            f"latency budget {target.latency_ms:g} ms is out of pruning's reach: with {ratio:.0%} "
            f"of channels removed the model still takes {latency['pruned_ms']:.3g} ms (dense "
            f"{latency['dense_ms']:.3g} ms; {latency['method']}); layers that pruning cannot "
            "shrink set this floor. Raise pruning.latency_ms or set pruning.channels instead"
        )
    return ratio, latency


def _estimate_latency(
    planner: Planner, target: Any, profile: Any, host: str
) -> tuple[float, dict[str, Any]]:
    """The latency budget turned into a MAC budget by the profile's cost model."""
    rate = cost_model_macs_per_ms(profile)
    budget = int(target.latency_ms * rate)
    ratio = _search_ratio(planner, lambda p: p.predicted_macs <= budget)
    chosen = planner.plan(ratio)
    dense, final = chosen.dense_macs, chosen.predicted_macs
    latency: dict[str, Any] = {
        "method": (
            f"MAC cost model, not measured: host {host} does not match {profile.name} "
            f"({profile.target.cpu}); assumed {rate / 1e6:.3g} GMAC/s"
        ),
        "budget_ms": target.latency_ms,
        "dense_ms": dense / rate,
        "pruned_ms": final / rate,
    }
    return ratio, latency


def _search_latency(
    model: Any,
    planner: Planner,
    budget_ms: float,
    threads: int,
    calibration: np.ndarray | None,
    withhold_amx: bool = False,
) -> tuple[float, dict[str, Any]]:
    """Bisect the ratio on measured int8 latency; each candidate is timed interleaved with dense."""
    from converter.pruning.latency import interleaved_latency, to_int8_tflite

    dense = to_int8_tflite(model, calibration)
    cache: dict[float, float] = {}

    def pruned_ms(ratio: float) -> float:
        if ratio not in cache:
            candidate = to_int8_tflite(rebuild(planner.plan(ratio)), calibration)
            dense_ms, cand_ms = interleaved_latency(
                [dense, candidate], threads=threads, iterations=30, withhold_amx=withhold_amx
            )
            cache[ratio] = cand_ms
            logger.info(
                "latency search: %.0f%% channels removed: %.2f ms (dense %.2f ms)",
                100 * ratio,
                cand_ms,
                dense_ms,
            )
        return cache[ratio]

    (dense_ms,) = interleaved_latency(
        [dense], threads=threads, iterations=30, withhold_amx=withhold_amx
    )
    info: dict[str, Any] = {"budget_ms": budget_ms, "dense_ms": dense_ms}
    if dense_ms <= budget_ms:
        info["pruned_ms"] = dense_ms
        return 0.0, info
    lo, hi = 0.0, 0.9
    if pruned_ms(hi) > budget_ms:
        info["pruned_ms"] = cache[hi]
        return hi, info
    for _ in range(5):
        mid = (lo + hi) / 2
        if pruned_ms(mid) <= budget_ms:
            hi = mid
        else:
            lo = mid
    info["pruned_ms"] = cache[hi]
    return hi, info
