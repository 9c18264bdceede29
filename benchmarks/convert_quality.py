"""How good is `edgegap convert`? Size, agreement with float, and speed of the int8 model.

Trains the digits CNN on scikit-learn's bundled digits (held-out split kept aside), converts it
with the edgegap pipeline for x86-avx2 (int8, float fallback allowed), and, for comparison, with
plain TFLiteConverter post-training quantization (optimizations=DEFAULT plus a representative
dataset, nothing else) on the same SavedModel and calibration samples. Prints:

- int8/fp32 size ratio (goal <= 0.27; the physical limit is 0.25),
- top-1 agreement of each converted model with the Keras float model on held-out digits (goal >= 99%),
- int8/fp32 latency ratio: float32 TFLite and both int8 models invoked round-robin in one loop,
  medians over many iterations, absolute milliseconds beside the ratios; the ratio comes last.

    .venv/bin/python benchmarks/convert_quality.py [--iterations 3000] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from converter.result import ConvertResult
    from converter.zoo.digits import DigitsData
    from firmware_profiles import Profile

logger = logging.getLogger(__name__)


def top1(model: object, x: np.ndarray) -> np.ndarray:
    from converter.tasks.tensor import run_model

    return run_model(model, x)[0].argmax(-1)  # type: ignore[arg-type]


def plain_ptq(saved_model: Path, calibration: np.ndarray) -> bytes:
    """Post-training integer quantization as the TFLite docs show it, with no other settings."""
    from converter.loading import import_tf, quiet_native_stderr

    tf = import_tf()
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([s[np.newaxis]] for s in calibration)
    with quiet_native_stderr():
        return bytes(conv.convert())


def interleaved_latency(
    models: dict[str, bytes], threads: int, iterations: int, warmup: int
) -> dict[str, np.ndarray]:
    """Per-invoke milliseconds of each model, invoked round-robin so they share the host's noise."""
    from converter.gates import measure_latency

    stats = measure_latency(models, threads=threads, runs=iterations, warmup=warmup)
    return {k: np.asarray(v.samples) for k, v in stats.items()}


@dataclass
class Trained:
    """The trained float model, its data split in [0, 1] floats, and its held-out top-1."""

    model: Any
    data: DigitsData
    train_x: np.ndarray
    test_x: np.ndarray
    calibration: np.ndarray
    float_top1: np.ndarray


@dataclass
class Converted:
    """The edgegap result and the three model blobs compared."""

    result: ConvertResult
    float_bytes: bytes
    edgegap_bytes: bytes
    plain_bytes: bytes


@dataclass
class Measured:
    """Held-out top-1 of each TFLite model and the median per-invoke milliseconds by key."""

    float_tflite_top1: np.ndarray
    edgegap_top1: np.ndarray
    plain_top1: np.ndarray
    med: dict[str, float]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="int8 conversion quality on the digits CNN")
    parser.add_argument("--iterations", type=int, default=3000, help="Timed invokes per model.")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--threads", type=int, default=0, help="Interpreter threads [default: the profile's]."
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=32, help="Filters of the first conv block.")
    parser.add_argument("--dense", type=int, default=256, help="Units of the hidden dense layer.")
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> Trained:
    """Train the digits CNN and print its size, training time and Keras float accuracy."""
    from converter.loading import import_tf
    from converter.zoo.digits import train_digits_cnn

    import_tf()
    t0 = time.perf_counter()
    model, data = train_digits_cnn(epochs=args.epochs, width=args.width, dense=args.dense)
    train_x = data.train_x.astype(np.float32) / 255.0
    test_x = data.test_x.astype(np.float32) / 255.0
    calibration = train_x[:200]
    float_top1 = model.predict(test_x, verbose=0).argmax(-1)
    print(
        f"digits CNN: {model.count_params():,} weights, trained in {time.perf_counter() - t0:.1f} s on "
        f"{len(train_x)} digits; held-out: {len(test_x)} digits, Keras float top-1 accuracy "
        f"{np.mean(float_top1 == data.test_y):.2%}"
    )
    return Trained(model, data, train_x, test_x, calibration, float_top1)


def convert_all(trained: Trained, profile: Profile) -> Converted:
    """Convert with edgegap, to plain float32 TFLite, and with plain TFLiteConverter PTQ."""
    from converter.data import Dataset
    from converter.loading import describe
    from converter.pipeline import ConvertOptions, convert
    from converter.quantize import convert_float, export_saved_model
    from converter.tasks.classification import ClassificationTask

    model = trained.model
    with tempfile.TemporaryDirectory() as tmp:
        result = convert(
            ConvertOptions(
                model=model,
                profile=profile,
                calibration=Dataset(trained.calibration),
                validation=Dataset(trained.test_x, labels={"y": trained.data.test_y}),
                output=Path(tmp) / "bundle",
                name="digits",
                version=1,
                latency_runs=20,
            )
        )
        saved = Path(tmp) / "saved_model"
        task = ClassificationTask(describe(model))
        export_saved_model(task, model, saved)
        float_bytes = convert_float(saved, task)
        plain_bytes = plain_ptq(saved, trained.calibration)
    return Converted(result, float_bytes, result.model_bytes, plain_bytes)


def measure(
    conv: Converted, test_x: np.ndarray, threads: int, args: argparse.Namespace
) -> Measured:
    """Held-out predictions of the three TFLite models, then their interleaved latency medians."""
    from converter.loading import quiet_native_stderr
    from converter.pipeline import open_converted
    from converter.tasks.tensor import run_model

    with quiet_native_stderr():
        float_tflite_top1 = run_model(open_converted(conv.float_bytes), test_x)[0].argmax(-1)
        edgegap_top1 = top1(open_converted(conv.edgegap_bytes), test_x)
        plain_top1 = top1(open_converted(conv.plain_bytes), test_x)
        lat = interleaved_latency(
            {"float32": conv.float_bytes, "edgegap": conv.edgegap_bytes, "plain": conv.plain_bytes},
            threads,
            args.iterations,
            args.warmup,
        )
    med = {k: float(np.median(v)) for k, v in lat.items()}
    return Measured(float_tflite_top1, edgegap_top1, plain_top1, med)


def fallback_summary(result: ConvertResult, profile: Profile) -> str:
    """What the float fallback did: not needed, which layers it kept in float, or why it failed."""
    fb = result.fallback
    if fb is None:
        return f"not needed (int8 drop {result.plain_accuracy.drop:.2%} within {profile.budgets.max_accuracy_drop:.0%})"
    if fb.passed:
        return f"{len(fb.float_layers)} layer(s) kept in float: {', '.join(e.label for e in fb.float_layers)}"
    return f"failed: {fb.reason}"


def print_conversion(conv: Converted, profile: Profile, trained: Trained, m: Measured) -> None:
    """The edgegap conversion's fallback and gates, and float32 TFLite's agreement with Keras."""
    result = conv.result
    print(
        f"edgegap x86-avx2 ({profile.quantization.scheme.value}, {profile.quantization.input_dtype.value} I/O): "
        f"float fallback {fallback_summary(result, profile)}; gates {'passed' if result.passed else 'FAILED: ' + result.reason}"
    )
    print(
        f"float32 TFLite vs Keras top-1 agreement: {np.mean(m.float_tflite_top1 == trained.float_top1):.2%}"
    )
    print()


def print_table(conv: Converted, trained: Trained, m: Measured) -> None:
    """One row per model: bytes, size against float32, agreement, accuracy and median latency."""
    float_bytes = conv.float_bytes
    rows = [
        ("float32 TFLite", float_bytes, m.float_tflite_top1, "float32"),
        ("edgegap int8 (x86-avx2)", conv.edgegap_bytes, m.edgegap_top1, "edgegap"),
        ("plain TFLiteConverter PTQ", conv.plain_bytes, m.plain_top1, "plain"),
    ]
    print(
        f"{'model':28} {'bytes':>10} {'size/fp32':>10} {'agree w/ float':>15} {'top-1 acc':>10} {'p50 ms':>9}"
    )
    for label, blob, pred, key in rows:
        print(
            f"{label:28} {len(blob):>10,} {len(blob) / len(float_bytes):>10.3f} "
            f"{np.mean(pred == trained.float_top1):>15.2%} {np.mean(pred == trained.data.test_y):>10.2%} {m.med[key]:>9.4f}"
        )
    print()


def print_summary(
    conv: Converted, trained: Trained, m: Measured, threads: int, iterations: int
) -> None:
    """Latency medians, then the size, agreement and latency ratios; the edgegap ratio comes last."""
    from converter.gates import host_arch

    float_bytes, edgegap_bytes, plain_bytes = conv.float_bytes, conv.edgegap_bytes, conv.plain_bytes
    float_top1, med = trained.float_top1, m.med
    print(
        f"latency: LiteRT on {host_arch()}, {threads} thread(s), {iterations} interleaved iterations per "
        f"model, medians: float32 {med['float32']:.4f} ms, edgegap int8 {med['edgegap']:.4f} ms, "
        f"plain PTQ {med['plain']:.4f} ms"
    )
    print(
        f"plain PTQ:  int8/fp32 size ratio {len(plain_bytes) / len(float_bytes):.3f}, top-1 agreement "
        f"{np.mean(m.plain_top1 == float_top1):.2%}, int8/fp32 latency ratio {med['plain'] / med['float32']:.3f}"
    )
    print(
        f"edgegap:    int8/fp32 size ratio {len(edgegap_bytes) / len(float_bytes):.3f} (goal <= 0.27), top-1 "
        f"agreement {np.mean(m.edgegap_top1 == float_top1):.2%} (goal >= 99%)"
    )
    print(
        f"edgegap int8/fp32 latency ratio (interleaved medians): {med['edgegap'] / med['float32']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from converter.gates import host_threads
    from firmware_profiles import load_profile

    trained = train(args)
    profile = load_profile("x86-avx2")
    threads = host_threads(args.threads or profile.runtime.threads)
    conv = convert_all(trained, profile)
    measured = measure(conv, trained.test_x, threads, args)
    print_conversion(conv, profile, trained, measured)
    print_table(conv, trained, measured)
    print_summary(conv, trained, measured, threads, args.iterations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
