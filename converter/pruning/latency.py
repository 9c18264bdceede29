"""Int8 TFLite conversion and host latency, used to check pruned models and to search a latency
budget. Speed is compared side by side: candidate and baseline interleaved, medians of many runs."""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _single_input_shape(model: Any) -> tuple[int, ...]:
    if len(model.inputs) != 1:
        raise ValueError("int8 conversion here takes single-input models")
    shape = tuple(model.inputs[0].shape[1:])
    if None in shape:
        raise ValueError(f"input shape {shape} is not static")
    return shape  # type: ignore[return-value]


def to_int8_tflite(
    model: Any,
    samples: np.ndarray | None = None,
    *,
    int8_io: bool = True,
    allow_custom_ops: bool = False,
    calibration_steps: int = 8,
) -> bytes:
    """Full-integer TFLite: SavedModel export, then TFLiteConverter.from_saved_model."""
    import tensorflow as tf

    shape = _single_input_shape(model)
    if samples is None:
        rng = np.random.default_rng(0)
        samples = rng.uniform(-1, 1, (calibration_steps, *shape)).astype(np.float32)

    def representative() -> Any:
        for s in samples[:calibration_steps]:
            yield [s[np.newaxis].astype(np.float32)]

    with tempfile.TemporaryDirectory(prefix="edgegap-prune-") as tmp:
        path = str(Path(tmp) / "saved")
        model.export(path, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(path)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        converter.allow_custom_ops = allow_custom_ops
        return bytes(converter.convert())


def _input_for(loaded: Any) -> np.ndarray:
    info = loaded.inputs[0]
    rng = np.random.default_rng(1)
    if np.issubdtype(info.dtype, np.integer):
        lim = np.iinfo(info.dtype)
        return rng.integers(lim.min, lim.max, size=info.shape, endpoint=True).astype(info.dtype)
    return rng.uniform(-1, 1, size=info.shape).astype(info.dtype)


def interleaved_latency(
    models: Sequence[bytes], *, threads: int = 1, iterations: int = 50, warmup: int = 5
) -> list[float]:
    """Median ms per invoke of each model, measured round-robin so noise hits all alike."""
    from agent.runtime import open_model

    loaded = [open_model(m, threads=threads) for m in models]
    for lm in loaded:
        lm.set_input(_input_for(lm))
        for _ in range(warmup):
            lm.invoke()
    times: list[list[float]] = [[] for _ in loaded]
    for _ in range(iterations):
        for i, lm in enumerate(loaded):
            t0 = time.perf_counter()
            lm.invoke()
            times[i].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]
