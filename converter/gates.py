"""The gates a converted model must pass for its profile: ops, size, arena, accuracy and latency.

Each gate is a policy object (the `Gate` protocol) holding its budget; `select_gates` picks the
ones a profile's budgets call for. The graph they read is converter.graph's. Latency is measured
here with LiteRT and labelled "host-measured" unless this machine is one the profile says stands
for the device.
"""

from __future__ import annotations

import logging
import os
import platform
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.runtime import BackendUnavailable, get_backend
from converter.amx import cpu_has_amx
from converter.graph import ModelGraph
from converter.tasks.base import AccuracyReport
from converter.timing import time_interleaved
from firmware_profiles import Profile, QuantScheme

logger = logging.getLogger(__name__)

PASS, FAIL, INFO = "pass", "fail", "info"


@dataclass
class GateResult:
    """One gate's verdict. 'info' gates are reported but cannot fail the conversion."""

    name: str
    status: str
    value: str
    limit: str
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.status != FAIL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_arch() -> str:
    return platform.machine() or "unknown"


def host_measured(profile: Profile) -> bool:
    """True when this host does not stand for the profile's device: latency is only indicative."""
    return host_arch() not in profile.target.host_match


def withholds_amx(profile: Profile) -> bool:
    """True where this host has AMX and the profile's device does not: latency for the profile is
    then measured with AMX withheld (converter/timing.py), on kernels like the device's. That holds
    for an Arm board timed here too: with AMX, narrow int8 layers run slower than in float."""
    return not profile.target.amx and cpu_has_amx()


def host_cpu(profile: Profile | None = None) -> str:
    """The host's arch, and on a CPU with AMX whether latency for `profile` is measured with it."""
    if not cpu_has_amx():
        return host_arch()
    withheld = profile is not None and withholds_amx(profile)
    return f"{host_arch()}, AMX {'withheld' if withheld else 'in use'}"


def latency_label(profile: Profile) -> str:
    where = "host-measured" if host_measured(profile) else "device-class host"
    return f"{where} ({host_cpu(profile)})"


@dataclass
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    runs: int
    threads: int
    backend: str
    amx: str = ""  # amx_label() where the models ran: "AMX withheld", "AMX in use", "no AMX"
    samples: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        return d


def host_threads(wanted: int) -> int:
    return max(1, min(wanted, os.cpu_count() or 1))


def measure_latency(
    models: dict[str, bytes],
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    backend: str | None = "litert",
    withhold_amx: bool = False,
) -> dict[str, LatencyStats]:
    """Invoke latency of each model, interleaved run by run so they share the host's noise; with
    `withhold_amx` (see withholds_amx), in a child process that keeps XNNPACK off AMX."""
    if backend is not None:
        try:
            get_backend(backend)
        except BackendUnavailable:
            logger.warning(
                "runtime backend %s is not available; measuring with the default one", backend
            )
            backend = None
    timed = time_interleaved(list(models.values()), threads, runs, warmup, backend, withhold_amx)
    out = {}
    for k, t in zip(models, timed.samples, strict=True):
        arr = np.asarray(t)
        out[k] = LatencyStats(
            p50=float(np.percentile(arr, 50)),
            p90=float(np.percentile(arr, 90)),
            p99=float(np.percentile(arr, 99)),
            mean=float(arr.mean()),
            runs=runs,
            threads=threads,
            backend=timed.backend,
            amx=timed.amx,
            samples=t,
        )
    return out


@dataclass(frozen=True)
class Measured:
    """What the gates judge: the converted model's graph, its size, accuracy and latency."""

    graph: ModelGraph
    size: int
    accuracy: AccuracyReport
    latency: LatencyStats


class Gate(Protocol):
    """A check a profile calls for; `check` gives its verdict on one converted model."""

    @property
    def name(self) -> str: ...

    def check(self, measured: Measured) -> GateResult: ...


@dataclass(frozen=True)
class OpsGate:
    """Every op is in the profile's allowlist (custom ones in its custom list); int8 is integer-only."""

    profile: Profile
    name: str = "ops"

    def check(self, measured: Measured) -> GateResult:
        graph, profile = measured.graph, self.profile
        allow = profile.ops.allowlist
        counts = graph.op_counts
        bad: dict[str, int] = {}
        for op, n in counts.items():
            if op in graph.custom_ops:
                if op not in profile.ops.custom:
                    bad[op] = n
            elif allow is not None and op not in allow:
                bad[op] = n
        value = f"{len(counts)} kinds, {len(graph.ops)} ops"
        limit = "any builtin" if allow is None else f"{len(allow)} allowed"
        if profile.ops.custom:
            limit += f" + {', '.join(profile.ops.custom)}"
        reasons = []
        if bad:
            listed = ", ".join(f"{op} ({n}×)" for op, n in sorted(bad.items()))
            reasons.append(f"ops not in {profile.name}'s allowlist: {listed}")
        if profile.quantization.scheme is QuantScheme.INT8 and graph.float_ops:
            listed = ", ".join(f"{op} ({n}×)" for op, n in sorted(Counter(graph.float_ops).items()))
            reasons.append(f"float ops in a full-integer model for {profile.name}: {listed}")
            limit += ", integer only"
        if reasons:
            return GateResult(self.name, FAIL, value, limit, "; ".join(reasons))
        return GateResult(self.name, PASS, value, limit)


@dataclass(frozen=True)
class SizeGate:
    profile: Profile
    budget: int  # bytes of model.tflite
    name: str = "size"

    def check(self, measured: Measured) -> GateResult:
        size, budget = measured.size, self.budget
        status = PASS if size <= budget else FAIL
        reason = (
            ""
            if status == PASS
            else f"model is {size:,} bytes, over {self.profile.name}'s {budget:,} byte budget"
        )
        return GateResult(self.name, status, f"{size:,} B", f"≤ {budget:,} B", reason)


@dataclass(frozen=True)
class ArenaGate:
    profile: Profile
    budget: int  # bytes of live activations at the peak
    name: str = "arena"

    def check(self, measured: Measured) -> GateResult:
        arena, budget = measured.graph.arena_estimate, self.budget
        value = f"≥ {arena:,} B (peak live tensors)"
        if arena > budget:
            return GateResult(
                self.name,
                FAIL,
                value,
                f"≤ {budget:,} B",
                f"activations need at least {arena:,} bytes, over {self.profile.name}'s {budget:,} byte arena",
            )
        return GateResult(self.name, PASS, value, f"≤ {budget:,} B")


@dataclass(frozen=True)
class AccuracyGate:
    profile: Profile
    budget: float  # largest drop against the float model
    name: str = "accuracy"

    def check(self, measured: Measured) -> GateResult:
        report, limit = measured.accuracy, self.budget
        ci = report.detail.get("ci95", {})
        interval = ci.get("quant", ci.get(report.metric))
        value = f"{report.metric} {report.quant_value:.4f}"
        if interval:
            value += (
                f" [{interval[0]:.3f}, {interval[1]:.3f}] on {report.detail.get('samples', '?')}"
            )
        value += f" (drop {report.drop:.2%}"
        if "drop" in ci:
            value += f" [{ci['drop'][0]:.2%}, {ci['drop'][1]:.2%}]"
        value += ")"
        if report.drop <= limit + 1e-12:
            return GateResult(self.name, PASS, value, f"drop ≤ {limit:.2%}")
        return GateResult(
            self.name,
            FAIL,
            value,
            f"drop ≤ {limit:.2%}",
            f"accuracy drop {report.drop:.2%} ({report.metric} {report.quant_value:.4f}) "
            f"is over {self.profile.name}'s {limit:.2%}",
        )


@dataclass(frozen=True)
class LatencyGate:
    """p50 within budget; only 'info' on a host that does not stand for the profile's device."""

    profile: Profile
    budget: float  # ms
    name: str = "latency"

    def check(self, measured: Measured) -> GateResult:
        stats, budget, profile = measured.latency, self.budget, self.profile
        value = f"p50 {stats.p50:.3g} ms, {latency_label(profile)}"
        limit = f"≤ {budget:g} ms"
        if host_measured(profile):
            return GateResult(
                self.name,
                INFO,
                value,
                limit,
                f"not enforced: this {host_arch()} host does not stand for a {profile.target.cpu}",
            )
        if stats.p50 <= budget:
            return GateResult(self.name, PASS, value, limit)
        return GateResult(
            self.name,
            FAIL,
            value,
            limit,
            f"p50 latency {stats.p50:.3g} ms is over {profile.name}'s {budget:g} ms budget",
        )


def select_gates(profile: Profile) -> list[Gate]:
    """The gates the profile's budgets call for, in report order: a budget it leaves unset
    (max_arena_bytes) selects no gate. Ops are always checked."""
    b = profile.budgets
    arena = None if b.max_arena_bytes is None else ArenaGate(profile, b.max_arena_bytes)
    gates: list[Gate | None] = [
        OpsGate(profile),
        SizeGate(profile, b.max_model_bytes),
        arena,
        AccuracyGate(profile, b.max_accuracy_drop),
        LatencyGate(profile, b.latency_ms),
    ]
    return [g for g in gates if g is not None]


def verdict(gates: list[GateResult], forced: bool = False) -> dict[str, Any]:
    """The manifest's gates record: every gate, the failed ones, and 'passed'."""
    failed = [g.name for g in gates if not g.passed]
    out: dict[str, Any] = {g.name: g.to_dict() for g in gates}
    out["passed"] = not failed
    out["failed"] = failed
    if forced and failed:
        out["forced"] = True
    return out


def first_failure(gates: list[GateResult]) -> str:
    for g in gates:
        if not g.passed:
            return f"gate {g.name} failed: {g.reason}"
    return ""
