"""What one conversion produced: the bundle's manifest, every gate, accuracy, latency and pruning.

Kept apart from the pipeline that fills it, so the report and the commands that read a result
do not depend on the pipeline that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle.manifest import Manifest
from converter.fallback import FallbackResult
from converter.gates import GateResult, LatencyStats
from converter.graph import ModelGraph
from converter.tasks.base import AccuracyReport
from firmware_profiles import Profile


@dataclass
class ConvertResult:
    manifest: Manifest
    passed: bool
    reason: str
    gates: list[GateResult]
    accuracy: AccuracyReport
    plain_accuracy: AccuracyReport  # before any float fallback
    fallback: FallbackResult | None
    latency: dict[str, LatencyStats]  # "float" and "quant"
    graph: ModelGraph
    model_bytes: bytes
    float_bytes: bytes
    profile: Profile
    calibration_source: str
    validation_source: str
    timings: dict[str, float]
    bundle: Path | None = None
    report_path: Path | None = None
    pruning: PruningSummary | None = None


@dataclass
class PruningSummary:
    """The original model against the pruned one, for the report; the int8 figures live beside it."""

    report: Any  # converter.pruning.api.PruneReport
    original_float_bytes: bytes
    pruned_accuracy: AccuracyReport  # pruned float model against the original float model
