"""Int8 TFLite conversion and host latency, used to check pruned models and to search a latency
budget. Speed is compared side by side: candidate and baseline interleaved, medians of many runs."""

from __future__ import annotations

import logging
import statistics
import tempfile
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


def to_float_tflite(model: Any) -> bytes:
    """float32 TFLite of the same model, the baseline int8 is weighed against."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="edgegap-prune-") as tmp:
        path = str(Path(tmp) / "saved")
        model.export(path, format="tf_saved_model", verbose=False)
        return bytes(tf.lite.TFLiteConverter.from_saved_model(path).convert())


def interleaved_latency(
    models: Sequence[bytes],
    *,
    threads: int = 1,
    iterations: int = 50,
    warmup: int = 5,
    withhold_amx: bool = False,
) -> list[float]:
    """Median ms per invoke of each model, measured round-robin so noise hits all alike; with
    `withhold_amx`, on XNNPACK's kernels without AMX (agent/runtime/timing.py)."""
    from converter.timing import time_interleaved

    timed = time_interleaved(models, threads, iterations, warmup, withhold=withhold_amx)
    return [statistics.median(t) for t in timed.samples]
