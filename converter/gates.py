"""The gates a converted model must pass for its profile: ops, size, arena, accuracy and latency.

The graph is read straight from the flatbuffer (ai_edge_litert's schema), so op names are the
model's own, never a delegate's. Latency is measured here with LiteRT and labelled
"host-measured" unless this machine is one the profile says stands for the device.
"""

from __future__ import annotations

import logging
import os
import platform
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import numpy as np

from agent.runtime import BackendUnavailable, get_backend
from converter.amx import cpu_has_amx
from converter.tasks.base import AccuracyReport
from converter.timing import time_interleaved
from firmware_profiles import Profile, QuantScheme

logger = logging.getLogger(__name__)

PASS, FAIL, INFO = "pass", "fail", "info"
_FLOAT_TYPES = {0, 1, 10, 18}  # float32, float16, float64, bfloat16
_DTYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 12: 8, 15: 4, 16: 2, 18: 2}


@cache
def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class ModelGraph:
    """What the flatbuffer says: ops in execution order (all subgraphs) and a peak-memory estimate."""

    ops: list[str]
    custom_ops: set[str]
    arena_estimate: int  # bytes of tensors alive at once in the main subgraph, at the peak
    subgraphs: int
    input_names: dict[int, str] = field(default_factory=dict)  # tensor index -> signature name
    output_names: dict[int, str] = field(default_factory=dict)
    float_ops: list[str] = field(default_factory=list)  # builtin ops that output float tensors

    @property
    def op_counts(self) -> Counter[str]:
        return Counter(self.ops)


def read_graph(model_bytes: bytes) -> ModelGraph:
    """Parse a .tflite flatbuffer; raises ValueError when it is not one."""
    from ai_edge_litert import schema_py_generated as schema

    if len(model_bytes) < 8 or model_bytes[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")
    model = schema.Model.GetRootAs(model_bytes, 0)
    names = _builtin_names()
    codes: list[tuple[str, bool]] = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == schema.BuiltinOperator.CUSTOM:
            codes.append(((oc.CustomCode() or b"?").decode(), True))
        else:
            codes.append((names.get(code, f"BUILTIN_{code}"), False))
    ops: list[str] = []
    custom: set[str] = set()
    float_ops: list[str] = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for j in range(sg.OperatorsLength()):
            op = sg.Operators(j)
            name, is_custom = codes[op.OpcodeIndex()]
            ops.append(name)
            if is_custom:
                custom.add(name)
            elif op.OutputsLength() and any(
                o >= 0 and int(sg.Tensors(int(o)).Type()) in _FLOAT_TYPES for o in op.OutputsAsNumpy()
            ):
                float_ops.append(name)
    arena = _peak_live_bytes(model, model.Subgraphs(0)) if model.SubgraphsLength() else 0
    ins, outs = _signature_names(model)
    return ModelGraph(
        ops=ops, custom_ops=custom, arena_estimate=arena, subgraphs=model.SubgraphsLength(),
        input_names=ins, output_names=outs, float_ops=float_ops,
    )


def _signature_names(model: Any) -> tuple[dict[int, str], dict[int, str]]:
    """Signature names of the main subgraph's inputs and outputs, by tensor index."""
    ins: dict[int, str] = {}
    outs: dict[int, str] = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        if int(sig.SubgraphIndex()) != 0:
            continue
        for j in range(sig.InputsLength()):
            t = sig.Inputs(j)
            ins[int(t.TensorIndex())] = (t.Name() or b"").decode()
        for j in range(sig.OutputsLength()):
            t = sig.Outputs(j)
            outs[int(t.TensorIndex())] = (t.Name() or b"").decode()
        break
    return ins, outs


def _peak_live_bytes(model: Any, sg: Any) -> int:
    """Largest sum of non-constant tensors alive at one op: a lower bound of a TFLM arena."""

    def nbytes(t: Any) -> int:
        shape = [max(int(d), 1) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
        return int(np.prod(shape, dtype=np.int64)) * _DTYPE_BYTES.get(int(t.Type()), 4)

    def constant(t: Any) -> bool:
        b = int(t.Buffer())
        if b <= 0 or b >= model.BuffersLength():
            return False
        buf = model.Buffers(b)
        return buf.DataLength() > 0 or int(buf.Size()) > 0

    n_ops = sg.OperatorsLength()
    born: dict[int, int] = {int(i): 0 for i in sg.InputsAsNumpy()} if sg.InputsLength() else {}
    last: dict[int, int] = {}
    for j in range(n_ops):
        op = sg.Operators(j)
        for i in op.InputsAsNumpy() if op.InputsLength() else []:
            if i >= 0:
                last[int(i)] = j
        for o in op.OutputsAsNumpy() if op.OutputsLength() else []:
            born.setdefault(int(o), j)
    for o in sg.OutputsAsNumpy() if sg.OutputsLength() else []:
        last[int(o)] = n_ops
    sizes = {}
    for idx in born:
        t = sg.Tensors(idx)
        if not constant(t):
            sizes[idx] = nbytes(t)
    peak = 0
    for step in range(max(n_ops, 1)):
        live = sum(sz for idx, sz in sizes.items() if born[idx] <= step <= last.get(idx, born[idx]))
        peak = max(peak, live)
    return peak


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


def check_ops(graph: ModelGraph, profile: Profile) -> GateResult:
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
        return GateResult("ops", FAIL, value, limit, "; ".join(reasons))
    return GateResult("ops", PASS, value, limit)


def check_size(size: int, profile: Profile) -> GateResult:
    budget = profile.budgets.max_model_bytes
    status = PASS if size <= budget else FAIL
    reason = "" if status == PASS else f"model is {size:,} bytes, over {profile.name}'s {budget:,} byte budget"
    return GateResult("size", status, f"{size:,} B", f"≤ {budget:,} B", reason)


def check_arena(graph: ModelGraph, profile: Profile) -> GateResult:
    budget = profile.budgets.max_arena_bytes
    value = f"≥ {graph.arena_estimate:,} B (peak live tensors)"
    if budget is None:
        return GateResult("arena", INFO, value, "no budget")
    if graph.arena_estimate > budget:
        return GateResult(
            "arena", FAIL, value, f"≤ {budget:,} B",
            f"activations need at least {graph.arena_estimate:,} bytes, over {profile.name}'s {budget:,} byte arena",
        )
    return GateResult("arena", PASS, value, f"≤ {budget:,} B")


def check_accuracy(report: AccuracyReport, profile: Profile) -> GateResult:
    limit = profile.budgets.max_accuracy_drop
    value = f"{report.metric} {report.quant_value:.4f} (drop {report.drop:.2%})"
    if report.drop <= limit + 1e-12:
        return GateResult("accuracy", PASS, value, f"drop ≤ {limit:.2%}")
    return GateResult(
        "accuracy", FAIL, value, f"drop ≤ {limit:.2%}",
        f"accuracy drop {report.drop:.2%} ({report.metric} {report.quant_value:.4f}) is over {profile.name}'s {limit:.2%}",
    )


def host_arch() -> str:
    return platform.machine() or "unknown"


def host_measured(profile: Profile) -> bool:
    """True when this host does not stand for the profile's device: latency is only indicative."""
    return host_arch() not in profile.target.host_match


def withholds_amx(profile: Profile) -> bool:
    """True where this host, standing for a device without AMX, has AMX itself: latency for the
    profile is then measured with AMX withheld (agent/runtime/timing.py), on kernels the device has."""
    return not profile.target.amx and not host_measured(profile) and cpu_has_amx()


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
            logger.warning("runtime backend %s is not available; measuring with the default one", backend)
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


def check_latency(stats: LatencyStats, profile: Profile) -> GateResult:
    budget = profile.budgets.latency_ms
    value = f"p50 {stats.p50:.3g} ms, {latency_label(profile)}"
    limit = f"≤ {budget:g} ms"
    if host_measured(profile):
        return GateResult(
            "latency", INFO, value, limit,
            f"not enforced: this {host_arch()} host does not stand for a {profile.target.cpu}",
        )
    if stats.p50 <= budget:
        return GateResult("latency", PASS, value, limit)
    return GateResult("latency", FAIL, value, limit, f"p50 latency {stats.p50:.3g} ms is over {profile.name}'s {budget:g} ms budget")


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
