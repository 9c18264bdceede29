"""SavedModel export and TFLite conversion with the quantization scheme a device profile asks for.

Keras 3 models are exported with keras.export.ExportArchive (through the task), then converted with
TFLiteConverter.from_saved_model. Integer schemes are calibrated on the calibration data.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import EdgegapError
from converter.activation_ranges import RangeReport, choose_ranges
from converter.data import Dataset
from converter.loading import import_tf, one_line, quiet_native_stderr
from converter.tasks.base import Task
from firmware_profiles import IODtype, Profile, QuantScheme

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_SAMPLES = 200


class QuantizeError(EdgegapError, RuntimeError):
    """The TFLite converter refused the model for this profile's scheme or op set."""


def converter_reason(exc: BaseException) -> str:
    """The most telling line of a converter error (the first 'error:' line, else the first line)."""
    for line in str(exc).splitlines():
        m = re.search(r"error: (.*)", line)
        if m:
            return m.group(1).strip()
    return one_line(exc)


def export_saved_model(task: Task, model: Any, out_dir: Path) -> Path:
    try:
        with quiet_native_stderr():
            task.export_saved_model(model, out_dir)
    except EdgegapError:
        raise
    except Exception as exc:
        raise QuantizeError(f"could not export the model to a SavedModel: {one_line(exc)}") from exc
    return out_dir


def representative(
    data: Dataset, limit: int = DEFAULT_CALIBRATION_SAMPLES
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """A representative-dataset factory: one [1, ...] float32 sample per step."""
    x = data.x[:limit].astype(np.float32)

    def gen() -> Iterator[list[np.ndarray]]:
        for sample in x:
            yield [sample[np.newaxis]]

    return gen


def tf_dtype(tf: Any, dtype: IODtype) -> Any:
    return {"int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16, "float32": tf.float32}[
        dtype.value
    ]


def make_converter(
    saved_model: Path, profile: Profile, task: Task, calibration: Dataset | None
) -> Any:
    """A TFLiteConverter set up for the profile's quantization scheme and I/O types."""
    tf = import_tf()
    q = profile.quantization
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    ops = tf.lite.OpsSet
    scheme = q.scheme
    if scheme in (QuantScheme.INT8, QuantScheme.INT8_FALLBACK, QuantScheme.INT16X8):
        if calibration is None or len(calibration.x) == 0:
            raise QuantizeError(f"scheme {scheme.value} needs calibration data")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative(calibration)
        if scheme is QuantScheme.INT8:
            conv.target_spec.supported_ops = [ops.TFLITE_BUILTINS_INT8]
        elif scheme is QuantScheme.INT8_FALLBACK:
            conv.target_spec.supported_ops = [ops.TFLITE_BUILTINS_INT8, ops.TFLITE_BUILTINS]
        else:
            conv.target_spec.supported_ops = [
                ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
        conv.inference_input_type = tf_dtype(tf, q.input_dtype)
        conv.inference_output_type = tf_dtype(tf, task.output_dtype(q.output_dtype))
    elif scheme is QuantScheme.FLOAT16:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif scheme is QuantScheme.DYNAMIC_RANGE:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    task.configure_converter(conv)
    return conv


def _run(conv: Any, what: str) -> bytes:
    try:
        with quiet_native_stderr():
            return bytes(conv.convert())
    except Exception as exc:
        raise QuantizeError(f"{what} failed: {converter_reason(exc)}") from exc


def convert_float(saved_model: Path, task: Task) -> bytes:
    """The unquantized float32 TFLite model: the baseline for size, latency and accuracy."""
    tf = import_tf()
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    task.configure_converter(conv)
    return _run(conv, "float TFLite conversion")


def refines_ranges(profile: Profile, ranges: str) -> bool:
    """Whether the activation ranges are refined (converter.activation_ranges): int8 schemes only."""
    return ranges == "mse" and profile.quantization.scheme in (
        QuantScheme.INT8,
        QuantScheme.INT8_FALLBACK,
    )


def quantize(
    saved_model: Path,
    profile: Profile,
    task: Task,
    calibration: Dataset | None,
    ranges: str = "minmax",
) -> tuple[bytes, bytes | None, RangeReport | None]:
    """Convert with the profile's scheme, calibrated on `calibration` when the scheme is integer.

    With ranges "mse" and an int8 scheme, the model is calibrated, then quantized with its
    activation ranges refined where that brings it closer to float (converter.activation_ranges):
    the calibrated model it came from comes back too, for the float fallback to quantize again.
    Otherwise the converter calibrates and quantizes in one go.
    """
    conv = make_converter(saved_model, profile, task, calibration)
    what = f"{profile.quantization.scheme.value} conversion for {profile.name}"
    if calibration is None or not refines_ranges(profile, ranges):
        return _run(conv, what), None, None
    conv._experimental_calibrate_only = True
    return choose_ranges(_run(conv, what), calibration, lambda c: requantize(c, profile, task, []))


def requantize(
    calibrated: bytes, profile: Profile, task: Task, denylisted_nodes: Sequence[str]
) -> bytes:
    """Quantize an already calibrated model, keeping the named nodes in float (int8 schemes
    only), with the I/O types of the first conversion (the profile's, as the task adjusts them)."""
    tf = import_tf()
    from tensorflow.lite.python import convert as tfl_convert

    q = profile.quantization
    in_type, out_type = tf_dtype(tf, q.input_dtype), tf_dtype(tf, task.output_dtype(q.output_dtype))
    try:
        with quiet_native_stderr():
            return bytes(
                tfl_convert.mlir_quantize(
                    calibrated,
                    disable_per_channel=False,
                    input_data_type=in_type,
                    output_data_type=out_type,
                    denylisted_nodes=list(denylisted_nodes) or None,
                )
            )
    except Exception as exc:
        raise QuantizeError(
            f"quantization with {len(denylisted_nodes)} float layers failed: {converter_reason(exc)}"
        ) from exc
