"""What one conversion produced: the bundle's manifest, every gate, accuracy, latency and pruning.

Kept apart from the pipeline that fills it, so the report and the commands that read a result
do not depend on the pipeline that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle.manifest import Manifest
from converter.fallback_cost import CostAwareResult
from converter.gates import GateResult, LatencyStats
from converter.graph import ModelGraph
from converter.tasks.base import AccuracyReport
from firmware_profiles import Profile, QuantScheme


@dataclass
class ConvertResult:
    manifest: Manifest
    passed: bool
    reason: str
    gates: list[GateResult]
    accuracy: AccuracyReport
    plain_accuracy: AccuracyReport  # before any float fallback
    fallback: CostAwareResult | None
    latency: dict[str, LatencyStats]  # "float" and "quant"
    graph: ModelGraph
    model_bytes: bytes
    float_bytes: bytes
    profile: Profile
    calibration_source: str
    validation_source: str
    timings: dict[str, float]
    int8_bytes: bytes = b""  # the pure int8 model the fallback's costs are measured against
    bundle: Path | None = None
    report_path: Path | None = None
    pruning: PruningSummary | None = None

    @property
    def scheme(self) -> str:
        """The scheme the bundle is named by (see bundle_scheme)."""
        return bundle_scheme(self.profile, self.graph)


def scheme_line(profile: Profile, graph: ModelGraph, size: int, int8_size: int) -> str:
    """The scheme, how many of the model's layers compute in float, and its size over pure int8."""
    layers = [op for op in graph.ops if op not in ("QUANTIZE", "DEQUANTIZE")]
    n = len(graph.float_layers)
    share = n / len(layers) if layers else 0.0
    over = f", size {size / int8_size:.3f}x pure int8" if int8_size else ""
    return f"scheme {bundle_scheme(profile, graph)}: {n} of {len(layers)} layers in float ({share:.1%}){over}"


def bundle_scheme(profile: Profile, graph: ModelGraph) -> str:
    """The profile's scheme, except that an int8-fallback model with no float layer is int8:
    the name says what the bundle holds, not what the profile would have allowed."""
    scheme = profile.quantization.scheme
    if scheme is QuantScheme.INT8_FALLBACK and not graph.float_layers:
        return QuantScheme.INT8.value
    return scheme.value


@dataclass
class PruningSummary:
    """The original model against the pruned one, for the report; the int8 figures live beside it."""

    report: Any  # converter.pruning.api.PruneReport
    original_float_bytes: bytes
    pruned_accuracy: AccuracyReport  # pruned float model against the original float model
