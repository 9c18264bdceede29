"""Float fallback pieces: each layer's own quantization error, and the fewest-passing-set search.

Layers are ranked by their own quantization error, measured by TFLite's QuantizationDebugger
(RMSE of each quantized op against its float twin on the same input, in quantization steps);
converter.fallback_cost takes its candidates from that ranking. `select_fewest` finds the
smallest passing prefix of a ranking and drops every item the gate does not need.
`find_float_layers` is the error-ranked search with no cost counted and no budget, which convert
used before converter.fallback_cost; benchmarks/quantization.py compares the two.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from converter.data import Dataset
from converter.quantize import make_converter, quiet_native_stderr, representative, requantize
from converter.tasks.base import AccuracyReport, Task
from firmware_profiles import Profile

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_TRIES = 24
DEBUG_SAMPLES = 64


@dataclass(frozen=True)
class LayerError:
    """One quantized op's own error: RMSE against float on the same input, in quantization steps."""

    node: str  # output tensor name: what the quantizer's denylist matches
    op: str
    rmse_steps: float
    output: str = ""  # signature name when the op produces a model output

    @property
    def label(self) -> str:
        """For people: the Keras layer (or model output) name and the op."""
        if self.output:
            return f"{self.output} (output, {self.op})"
        parts = self.node.split(";")[0].split("/")
        layer = parts[-2] if len(parts) >= 2 else parts[0]
        return f"{layer} ({self.op})"


def _output_aliases(model_bytes: bytes) -> dict[str, str]:
    """Tensor name -> signature output name, for the main subgraph's outputs."""
    from ai_edge_litert import schema_py_generated as schema

    from converter.graph import read_graph

    graph = read_graph(model_bytes)
    sg = schema.Model.GetRootAs(model_bytes, 0).Subgraphs(0)
    return {(sg.Tensors(i).Name() or b"").decode(): name for i, name in graph.output_names.items()}


@dataclass
class Attempt:
    float_layers: int
    drop: float
    passed: bool


@dataclass
class FallbackResult:
    passed: bool
    float_layers: list[LayerError]
    model: bytes | None
    accuracy: AccuracyReport | None
    ranking: list[LayerError]
    attempts: list[Attempt] = field(default_factory=list)
    reason: str = ""


def select_fewest(
    ranked: Sequence[T], passes: Callable[[list[T]], bool], max_tries: int = DEFAULT_MAX_TRIES
) -> list[T] | None:
    """Fewest items of `ranked` (worst first) whose exclusion `passes`; None when none does.

    Doubling then bisection find the shortest passing prefix; then each chosen item is dropped
    if the rest still passes. Results are cached, and at most `max_tries` sets are evaluated.
    """
    cache: dict[tuple[int, ...], bool] = {}

    def ok(idx: list[int]) -> bool:
        key = tuple(sorted(idx))
        if key not in cache:
            if len(cache) >= max_tries:
                return False
            cache[key] = passes([ranked[i] for i in key])
        return cache[key]

    n = len(ranked)
    if n == 0:
        return None
    lo, hi = 0, 1  # prefix of lo fails (or is empty), prefix of hi is the next to try
    while not ok(list(range(hi))):
        if hi == n:
            return None
        lo, hi = hi, min(2 * hi, n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(list(range(mid))):
            hi = mid
        else:
            lo = mid
    chosen = list(range(hi))
    for i in reversed(list(chosen)):
        rest = [j for j in chosen if j != i]
        if rest and ok(rest):
            chosen = rest
    return [ranked[i] for i in chosen]


def layer_errors(
    saved_model: Path, profile: Profile, task: Task, calibration: Dataset
) -> tuple[bytes, list[LayerError]]:
    """The calibrated model and every quantized op's own error, worst first."""
    from converter.quantize import import_tf

    tf = import_tf()
    conv = make_converter(saved_model, profile, task, calibration)
    debug_gen = representative(calibration, DEBUG_SAMPLES)
    with warnings.catch_warnings(), quiet_native_stderr():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=conv, debug_dataset=debug_gen
        )
        debugger.run()
        buf = io.StringIO()
        debugger.layer_statistics_dump(buf)
    calibrated = bytes(debugger.calibrated_model)
    aliases = _output_aliases(calibrated)
    buf.seek(0)
    errors = []
    for row in csv.DictReader(buf):
        scale = float(row.get("scale") or 0.0)
        mse = float(row.get("mean_squared_error") or "nan")
        steps = math.sqrt(mse) / scale if scale > 0 and mse == mse else float("nan")
        node = row["tensor_name"]
        errors.append(
            LayerError(node=node, op=row["op_name"], rmse_steps=steps, output=aliases.get(node, ""))
        )
    errors.sort(key=lambda e: (-(e.rmse_steps if e.rmse_steps == e.rmse_steps else -1.0), e.node))
    return calibrated, errors


def find_float_layers(
    saved_model: Path,
    profile: Profile,
    task: Task,
    calibration: Dataset,
    evaluate: Callable[[bytes], AccuracyReport],
    on_attempt: Callable[[int], None] | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> FallbackResult:
    """Search for the fewest float layers that bring the accuracy drop within the profile's limit."""
    limit = profile.budgets.max_accuracy_drop
    calibrated, ranking = layer_errors(saved_model, profile, task, calibration)
    logger.info(
        "fallback ranking: %s", ", ".join(f"{e.label}={e.rmse_steps:.2f}" for e in ranking[:8])
    )
    attempts: list[Attempt] = []
    best: dict[tuple[str, ...], tuple[bytes, AccuracyReport]] = {}

    def passes(layers: list[LayerError]) -> bool:
        if on_attempt:
            on_attempt(len(layers))
        model = requantize(calibrated, profile, task, [e.node for e in layers])
        report = evaluate(model)
        ok = report.drop <= limit + 1e-12
        attempts.append(Attempt(len(layers), report.drop, ok))
        logger.info(
            "fallback with %d float layers: drop %.4f (%s)",
            len(layers),
            report.drop,
            "pass" if ok else "fail",
        )
        if ok:
            best[tuple(e.node for e in layers)] = (model, report)
        return ok

    chosen = select_fewest(ranking, passes, max_tries)
    if chosen is None:
        return FallbackResult(
            False,
            [],
            None,
            None,
            ranking,
            attempts,
            f"no set of float layers within {len(attempts)} tries brings the drop within {limit:.2%}",
        )
    model, report = best[tuple(e.node for e in chosen)]
    return FallbackResult(True, chosen, model, report, ranking, attempts)
