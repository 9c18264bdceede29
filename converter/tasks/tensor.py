"""The plain tensor task: any outputs, compared with the float model as tensors.

Also home to what every Keras task shares: exporting a single-input model with named outputs,
and running a converted model over a batch one sample at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agent.bundle.manifest import Decoder, OutputRole
from agent.preprocess import dequantize, round_to_int
from agent.runtime import LoadedModel, TensorInfo
from converter.data import Dataset
from converter.intervals import BOOTSTRAP_ROUNDS, percentile95, resamples
from converter.loading import SourceModel, describe
from converter.tasks.base import AccuracyReport, FloatFn, Task

logger = logging.getLogger(__name__)

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def export_signature(source: SourceModel, out_dir: Path) -> None:
    """SavedModel with one `serve` signature: fixed batch 1, outputs named as source.output_names."""
    import keras
    import tensorflow as tf

    model = source.model
    spec = tf.TensorSpec((1, *source.input_shape), tf.float32, name=source.input_name)

    def serve(x: Any) -> dict[str, Any]:
        return dict(
            zip(source.output_names, source.outputs_of(model(x, training=False)), strict=True)
        )

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[spec])
    archive.write_out(str(out_dir), verbose=False)


def quantize_input(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Normalized float input to the tensor's dtype (quantized with its scale and zero point),
    rounded as the device's agent.preprocess.Normalizer rounds."""
    name = np.dtype(info.dtype).name
    if name in _INT_RANGES:
        lo, hi = _INT_RANGES[name]
        q = round_to_int(np.asarray(x, np.float64) / info.scale + info.zero_point)
        return np.clip(q, lo, hi).astype(info.dtype)
    return x.astype(info.dtype)


def run_model(model: LoadedModel, x: np.ndarray) -> list[np.ndarray]:
    """Run every sample of x (N, ...) through the model; dequantized outputs in model.outputs order."""
    info = model.inputs[0]
    results: list[list[np.ndarray]] = [[] for _ in model.outputs]
    for sample in x:
        model.set_input(quantize_input(sample[np.newaxis], info))
        model.invoke()
        for j, out in enumerate(model.outputs):
            results[j].append(dequantize(model.get(out.index), out.scale, out.zero_point)[0])
    return [np.stack(r) for r in results]


def pair_outputs(names: Sequence[str], outputs: Sequence[TensorInfo]) -> list[int]:
    """Position in `outputs` of each float output name: by name, else by unique shape, else order."""
    by_name = {o.name: i for i, o in enumerate(outputs)}
    if all(n in by_name for n in names):
        return [by_name[n] for n in names]
    if len(names) == len(outputs) == 1:
        return [0]
    raise ValueError(
        f"cannot pair float outputs {list(names)} with converted outputs {[o.name for o in outputs]}"
    )


def r2_drop(float_out: np.ndarray, quant_out: np.ndarray) -> tuple[float, dict[str, float]]:
    """1 - R² of the converted output against float: the share of the float signal lost."""
    f = float_out.astype(np.float64).ravel()
    q = quant_out.astype(np.float64).ravel()
    err = q - f
    var = float(np.sum((f - f.mean()) ** 2))
    sse = float(np.sum(err**2))
    drop = sse / var if var > 0 else (0.0 if sse == 0 else 1.0)
    rmse = float(np.sqrt(np.mean(err**2))) if err.size else 0.0
    std = float(f.std()) if f.size else 0.0
    return drop, {
        "rmse": rmse,
        "nrmse": rmse / std if std > 0 else 0.0,
        "max_abs_error": float(np.max(np.abs(err))) if err.size else 0.0,
    }


def worst_r2_interval(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> list[float]:
    """95% percentile-bootstrap interval over samples (the first axis) of the worst output's R²
    against float; [] with fewer than two samples."""
    n = len(pairs[0][0]) if pairs else 0
    if n < 2:
        return []
    worst = []
    for idx in resamples(n, rounds, seed):
        worst.append(1.0 - max(r2_drop(f[idx], q[idx])[0] for f, q in pairs))
    return percentile95(np.array(worst))


class TensorTask(Task):
    """Outputs are plain tensors; accuracy drop is 1 - R² of the worst output against float."""

    name: ClassVar[str] = "tensor"
    decoder: ClassVar[Decoder] = Decoder.TENSOR

    def __init__(self, source: SourceModel | None = None) -> None:
        self.source = source

    def bind(self, model: Any) -> SourceModel:
        if self.source is None or self.source.model is not model:
            self.source = describe(model)
        return self.source

    def export_saved_model(self, model: Any, out_dir: Path) -> None:
        export_signature(self.bind(model), out_dir)

    def output_roles(self, outputs: Sequence[TensorInfo]) -> list[OutputRole]:
        return [OutputRole.TENSOR for _ in outputs]

    def _paired(
        self, float_fn: FloatFn, quant: LoadedModel, data: Dataset
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        names = self.source.output_names if self.source else [o.name for o in quant.outputs]
        floats = list(float_fn(data.x))
        quants = run_model(quant, data.x)
        order = pair_outputs(names, quant.outputs)
        return [(n, np.asarray(f), quants[i]) for n, f, i in zip(names, floats, order, strict=True)]

    def accuracy(self, float_fn: FloatFn, quant: LoadedModel, data: Dataset) -> AccuracyReport:
        per_output: dict[str, Any] = {}
        worst = 0.0
        pairs = []
        for name, f, q in self._paired(float_fn, quant, data):
            pairs.append((f.reshape(q.shape), q))
            drop, stats = r2_drop(*pairs[-1])
            per_output[name] = {"r2": 1.0 - drop, **stats}
            worst = max(worst, drop)
        detail: dict[str, Any] = {"outputs": per_output, "samples": len(data.x)}
        interval = worst_r2_interval(pairs)
        if interval:
            detail["ci95"] = {"output_r2": interval}
        return AccuracyReport(
            metric="output_r2", float_value=1.0, quant_value=1.0 - worst, drop=worst, detail=detail
        )
