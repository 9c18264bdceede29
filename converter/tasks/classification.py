"""The classification task: one [1, classes] output; accuracy is top-1 agreement with the float model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agent.bundle.manifest import Decoder, OutputRole
from agent.runtime import LoadedModel, TensorInfo
from converter.data import Dataset
from converter.loading import ModelLoadError, SourceModel
from converter.tasks.base import AccuracyReport, FloatFn
from converter.tasks.tensor import TensorTask, export_signature

logger = logging.getLogger(__name__)


def looks_like_classifier(source: SourceModel, probe: Sequence[np.ndarray]) -> bool:
    """One output, shaped [batch, classes] with at least two classes."""
    return len(source.output_names) == 1 and probe[0].ndim == 2 and probe[0].shape[-1] >= 2


def is_probabilities(values: np.ndarray) -> bool:
    """Rows that are non-negative and sum to one came out of a softmax."""
    v = values.astype(np.float64)
    return bool(np.all(v >= -1e-6) and np.allclose(v.sum(axis=-1), 1.0, atol=1e-3))


class ClassificationTask(TensorTask):
    """A classifier: the role is logits or probabilities, decided from the float model's outputs."""

    name: ClassVar[str] = "classification"
    decoder: ClassVar[Decoder] = Decoder.CLASSIFICATION

    def __init__(self, source: SourceModel | None = None) -> None:
        super().__init__(source)
        self.probabilities: bool | None = None

    def export_saved_model(self, model: Any, out_dir: Path) -> None:
        source = self.bind(model)
        rng = np.random.default_rng(0)
        probe = source.predict(rng.normal(size=(4, *source.input_shape)).astype(np.float32))
        if not looks_like_classifier(source, probe):
            shapes = [tuple(p.shape[1:]) for p in probe]
            raise ModelLoadError(
                f"a classifier has one [batch, classes] output; this model gives {shapes} (use --task tensor)"
            )
        self.probabilities = is_probabilities(probe[0])
        export_signature(source, out_dir)

    def output_roles(self, outputs: Sequence[TensorInfo]) -> list[OutputRole]:
        if len(outputs) != 1:
            raise ModelLoadError(
                f"a classifier has one output; the converted model has {len(outputs)}"
            )
        return [OutputRole.PROBABILITIES if self.probabilities else OutputRole.LOGITS]

    def accuracy(self, float_fn: FloatFn, quant: LoadedModel, data: Dataset) -> AccuracyReport:
        ((_, f, q),) = self._paired(float_fn, quant, data)
        f_top, q_top = f.reshape(q.shape).argmax(axis=-1), q.argmax(axis=-1)
        agreement = float(np.mean(f_top == q_top)) if len(q_top) else 0.0
        detail: dict[str, Any] = {"samples": int(len(q_top)), "classes": int(q.shape[-1])}
        labels = data.labels.get("y") if isinstance(data.labels, dict) else None
        if labels is not None and len(labels) == len(q_top):
            y = np.asarray(labels).astype(np.int64)
            detail["float_top1_accuracy"] = float(np.mean(f_top == y))
            detail["quant_top1_accuracy"] = float(np.mean(q_top == y))
        return AccuracyReport(
            metric="top1_agreement",
            float_value=1.0,
            quant_value=agreement,
            drop=1.0 - agreement,
            detail=detail,
        )
