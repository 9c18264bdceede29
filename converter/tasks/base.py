"""The task adapter interface used by the conversion pipeline.

A task knows how to export its Keras model to a SavedModel the TFLite converter reads, which
role each converted output plays, and how to score accuracy of the converted model against float.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agent.bundle.manifest import Decoder, OutputRole
from agent.runtime import LoadedModel, TensorInfo
from converter.data import Dataset, Normalization
from firmware_profiles import IODtype

logger = logging.getLogger(__name__)


@dataclass
class AccuracyReport:
    metric: str  # e.g. "top1_agreement", "map50", "output_rmse"
    float_value: float
    quant_value: float
    drop: float  # in the unit the profile's max_accuracy_drop uses (fraction, 0.01 = 1 point)
    detail: dict[str, Any] = field(default_factory=dict)


FloatFn = Callable[[np.ndarray], Sequence[np.ndarray]]


class Task(ABC):
    name: ClassVar[str]
    decoder: ClassVar[Decoder]

    @abstractmethod
    def export_saved_model(self, model: Any, out_dir: Path) -> None:
        """Write a SavedModel for TFLiteConverter.from_saved_model (Keras 3: keras.export.ExportArchive)."""

    def output_dtype(self, profile_dtype: IODtype) -> IODtype:
        """The converted model's output type, given the profile's (every quantization of the
        model uses it: the first conversion and the float fallback's requantizations)."""
        return profile_dtype

    def configure_converter(self, converter: Any) -> None:  # noqa: B027 - optional hook
        """Adjust the TFLite converter (e.g. allow_custom_ops for detection post-processing)."""

    @abstractmethod
    def output_roles(self, outputs: Sequence[TensorInfo]) -> list[OutputRole]:
        """Role of each converted output, matched by tensor name and shape, never by position alone."""

    @abstractmethod
    def accuracy(self, float_fn: FloatFn, quant: LoadedModel, data: Dataset) -> AccuracyReport:
        """Score the converted model against the float model on validation data."""

    def output_order(self, model_bytes: bytes) -> list[int] | None:
        """Tensor indices in the order the converted model should list its outputs; None keeps
        the converter's order (converter.output_order)."""
        return None

    def divergence(self, float_fn: FloatFn, quant: LoadedModel, data: Dataset) -> float:
        """How far the converted model's outputs are from float's (0: identical); the float
        fallback ranks layers by how much of it they remove. Default: the accuracy drop."""
        return self.accuracy(float_fn, quant, data).drop

    def protected_layers(self, model: Any) -> list[str]:
        """Layers that channel pruning must leave whole (e.g. outputs whose width is fixed)."""
        return []

    def manifest_extra(self) -> dict[str, Any]:
        """Decoder parameters for the manifest's `extra` field."""
        return {}

    def normalization(self) -> Normalization | None:
        """The input normalization the model itself records (a detector's sidecar); None when the
        user gives it (--mean, --std, --color-order)."""
        return None
