"""Unstructured magnitude pruning: zero the smallest weights of each kernel, fine-tune with the
zeros held. The compressed file shrinks; dense CPU kernels still multiply the zeros, so latency
does not improve. Channel pruning is what makes a model faster."""

from __future__ import annotations

import io
import logging
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.pruning.distill import FineTuneResult, distill
from converter.pruning.plan import make_plan
from converter.pruning.rebuild import rebuild

logger = logging.getLogger(__name__)

LATENCY_NOTE = (
    "Magnitude pruning zeroes weights but keeps every kernel's shape: the compressed file shrinks, "
    "CPU latency does not (dense kernels still multiply the zeros). Use --channels for speed."
)

_KERNELS = {"kernel", "depthwise_kernel", "pointwise_kernel"}


@dataclass
class SparsityReport:
    sparsity: float  # zero fraction over the pruned kernels
    dense_zipped: int  # deflate-compressed float weights, bytes
    sparse_zipped: int
    fine_tune: FineTuneResult | None
    note: str = LATENCY_NOTE


def zipped_size(model: Any) -> int:
    """Bytes of all weights as float32, deflate level 9: what zeros save in a compressed file."""
    buf = io.BytesIO()
    for w in model.get_weights():
        buf.write(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return len(zlib.compress(buf.getvalue(), 9))


def _kernels(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        for v in layer.trainable_weights:
            name = str(getattr(v, "path", v.name)).split("/")[-1]
            if name in _KERNELS and len(v.shape) >= 2:
                out.append(v)
    return out


def magnitude_prune(
    model: Any,
    sparsity: float,
    data: np.ndarray | None = None,
    labels: Any = None,
    *,
    epochs: int = 0,
    **fine_tune: Any,
) -> tuple[Any, SparsityReport]:
    """A copy of the model with `sparsity` of every kernel's smallest-magnitude weights at zero."""
    if not 0 < sparsity < 1:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    student = rebuild(make_plan(model, 0.0))
    masks: list[tuple[Any, np.ndarray]] = []
    for v in _kernels(student):
        w = np.asarray(v)
        k = int(sparsity * w.size)
        if k == 0:
            continue
        threshold = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
        mask = (np.abs(w) > threshold).astype(w.dtype)
        v.assign(w * mask)
        masks.append((v, mask))

    def hold_zeros() -> None:
        for v, mask in masks:
            v.assign(v * mask)

    result = None
    if data is not None and epochs > 0:
        result = distill(
            student,
            model,
            data,
            labels,
            epochs=epochs,
            after_step=hold_zeros,
            label="sparse fine-tune",
            **fine_tune,
        )
        hold_zeros()
    zeros = sum(int((np.asarray(v) == 0).sum()) for v, _ in masks)
    total = sum(int(np.prod(v.shape)) for v, _ in masks)
    report = SparsityReport(
        sparsity=zeros / total if total else 0.0,
        dense_zipped=zipped_size(model),
        sparse_zipped=zipped_size(student),
        fine_tune=result,
    )
    logger.info("magnitude pruning: %.1f%% zeros; %s", 100 * report.sparsity, LATENCY_NOTE)
    return student, report
