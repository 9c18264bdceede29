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
from converter.intervals import wilson
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


def mean_kl(float_out: np.ndarray, quant_out: np.ndarray, probabilities: bool) -> float:
    """Mean KL(float || converted) over samples, in nats; logits go through a softmax first."""
    f, q = float_out.astype(np.float64), quant_out.astype(np.float64)
    if not probabilities:
        f, q = _softmax(f), _softmax(q)
    eps = 1e-7
    f, q = np.clip(f, eps, 1.0), np.clip(q, eps, 1.0)
    f, q = f / f.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    return float(np.mean(np.sum(f * np.log(f / q), axis=-1))) if len(f) else 0.0


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _interval(hits: int, n: int) -> list[float]:
    lo, hi = wilson(hits, n)
    return [round(lo, 4), round(hi, 4)]


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

    def divergence(self, float_fn: FloatFn, quant: LoadedModel, data: Dataset) -> float:
        ((_, f, q),) = self._paired(float_fn, quant, data)
        return mean_kl(f.reshape(q.shape), q, bool(self.probabilities))

    def accuracy(self, float_fn: FloatFn, quant: LoadedModel, data: Dataset) -> AccuracyReport:
        """Against the labels when the data has them (the drop is float's accuracy minus the
        converted model's), else top-1 agreement with float. Agreement, the KL divergence of the
        outputs and a 95% Wilson interval of every proportion are in the detail either way."""
        ((_, f, q),) = self._paired(float_fn, quant, data)
        f = f.reshape(q.shape)
        f_top, q_top = f.argmax(axis=-1), q.argmax(axis=-1)
        n = len(q_top)
        agree = int(np.sum(f_top == q_top))
        detail: dict[str, Any] = {
            "samples": n,
            "classes": int(q.shape[-1]),
            "top1_agreement": agree / n if n else 0.0,
            "kl_divergence": mean_kl(f, q, bool(self.probabilities)),
            "ci95": {"top1_agreement": _interval(agree, n)},
        }
        labels = data.labels.get("y") if isinstance(data.labels, dict) else None
        if labels is None or len(labels) != n or n == 0:
            return AccuracyReport(
                "top1_agreement",
                1.0,
                agree / n if n else 0.0,
                1.0 - (agree / n if n else 0.0),
                detail,
            )
        y = np.asarray(labels).astype(np.int64)
        f_hits, q_hits = int(np.sum(f_top == y)), int(np.sum(q_top == y))
        detail["float_top1_accuracy"], detail["quant_top1_accuracy"] = f_hits / n, q_hits / n
        detail["ci95"].update(float=_interval(f_hits, n), quant=_interval(q_hits, n))
        return AccuracyReport(
            "top1_accuracy", f_hits / n, q_hits / n, (f_hits - q_hits) / n, detail
        )
