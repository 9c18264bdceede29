"""Conditioning a Keras model for int8 before it is converted: cross-layer equalization
(converter.equalization), then bias correction (converter.bias_correction).

Both change weights, not what the model is: equalization computes the same model in float, bias
correction moves each layer's output mean by the shift its int8 weights will add. Whether they help
depends on the model, so the conditioned model is converted too, and kept only when its int8
outputs on the calibration data are closer to the original float model's (relative squared error,
as converter.activation_ranges decides) than the plain int8 model's. The float model every
figure is measured against stays the original.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.activation_ranges import DEFAULT_SAMPLES, RangeReport, output_error, outputs
from converter.bias_correction import BiasReport, correct_biases
from converter.data import Dataset
from converter.equalization import EqualizeReport, equalize
from converter.pruning.graph import PruningError
from converter.quantize import export_saved_model, quantize, refines_ranges
from converter.tasks.base import Task
from firmware_profiles import Profile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quantized:
    """An int8 model, the calibrated model it came from (refined ranges only), what refining the
    ranges did, and the SavedModel it was converted from (the float fallback starts there)."""

    model: bytes
    calibrated: bytes | None
    ranges: RangeReport | None
    saved: Path


@dataclass(frozen=True)
class Conditioning:
    """What conditioning did and whether its int8 model was kept."""

    equalized: EqualizeReport | None
    corrected: BiasReport | None
    plain_error: float  # int8 output error on the calibration data, unconditioned
    conditioned_error: float

    @property
    def kept(self) -> bool:
        return self.conditioned_error < self.plain_error

    def record(self) -> dict[str, object]:
        return {
            "kept": self.kept,
            "equalization": self.equalized.record() if self.equalized else None,
            "bias_correction": self.corrected.record() if self.corrected else None,
            "output_error": {
                "plain": round(self.plain_error, 6),
                "conditioned": round(self.conditioned_error, 6),
            },
        }

    def describe(self) -> str:
        return summary(self.record())


def summary(record: Mapping[str, Any]) -> str:
    """One line on what conditioning did, from its record (as the manifest's metrics keep it)."""
    steps = []
    if (record.get("equalization") or {}).get("tensors"):
        steps.append(f"{record['equalization']['tensors']} int8 tensor(s) equalized")
    if (record.get("bias_correction") or {}).get("layers"):
        steps.append(f"{record['bias_correction']['layers']} layer bias(es) corrected")
    err = record["output_error"]
    verdict = "kept" if record["kept"] else "not kept, the plain int8 model is closer"
    return (
        f"{', '.join(steps) or 'nothing changed'}; int8 output error on the calibration data "
        f"{err['conditioned']:.4g} (plain {err['plain']:.4g}): {verdict}"
    )


def condition_model(
    model: Any, x: Any, equalization: bool, bias_correction: bool
) -> tuple[Any, EqualizeReport | None, BiasReport | None]:
    """The model with the asked-for steps applied; the same model when neither applies."""
    eq = bc = None
    if equalization:
        model, eq = equalize(model, x)
    if bias_correction:
        model, bc = correct_biases(model, x)
    return model, eq, bc


def condition(
    model: Any,
    task: Task,
    profile: Profile,
    calibration: Dataset,
    float_bytes: bytes,
    plain: Quantized,
    workdir: Path,
    equalization: bool = True,
    bias_correction: bool = True,
    ranges: str = "mse",
) -> tuple[Quantized, Conditioning | None]:
    """The int8 model of the conditioned `model` where it comes closer to float than `plain`,
    else `plain`; and what was done (None when nothing applies to this model)."""
    if not (equalization or bias_correction) or not refines_ranges(profile, "mse"):
        return plain, None
    if len(getattr(model, "inputs", None) or []) != 1:
        return plain, None  # single-input models only, as for the activation ranges
    x = calibration.x
    try:
        changed, eq, bc = condition_model(model, x, equalization, bias_correction)
    except (PruningError, ValueError, TypeError, AttributeError) as exc:
        logger.info("model not conditioned for int8: %s", exc)
        return plain, None
    if changed is model:
        return plain, None
    saved = export_saved_model(task, changed, workdir / "conditioned_saved_model")
    int8, calibrated, report = quantize(saved, profile, task, calibration, ranges)
    sample = x[:DEFAULT_SAMPLES]
    reference = outputs(float_bytes, sample)
    result = Conditioning(
        eq, bc, output_error(plain.model, reference, sample), output_error(int8, reference, sample)
    )
    logger.info("conditioning: %s", result.describe())
    if not result.kept:
        return plain, result
    return Quantized(int8, calibrated, report, saved), result
