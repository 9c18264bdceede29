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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="int8 conversion quality on the digits CNN")
    parser.add_argument("--iterations", type=int, default=3000, help="Timed invokes per model.")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--threads", type=int, default=0, help="Interpreter threads [default: the profile's]."
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=32, help="Filters of the first conv block.")
    parser.add_argument("--dense", type=int, default=256, help="Units of the hidden dense layer.")
    args = parser.parse_args(argv)

    from converter.data import Dataset
    from converter.gates import host_arch, host_threads
    from converter.loading import describe, import_tf, quiet_native_stderr
    from converter.pipeline import ConvertOptions, convert, open_converted
    from converter.quantize import convert_float, export_saved_model
    from converter.tasks.classification import ClassificationTask
    from converter.tasks.tensor import run_model
    from converter.zoo.digits import train_digits_cnn
    from firmware_profiles import load_profile

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

    profile = load_profile("x86-avx2")
    threads = host_threads(args.threads or profile.runtime.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = convert(
            ConvertOptions(
                model=model,
                profile=profile,
                calibration=Dataset(calibration),
                validation=Dataset(test_x, labels={"y": data.test_y}),
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
        plain_bytes = plain_ptq(saved, calibration)
    edgegap_bytes = result.model_bytes

    with quiet_native_stderr():
        float_tflite_top1 = run_model(open_converted(float_bytes), test_x)[0].argmax(-1)
        edgegap_top1 = top1(open_converted(edgegap_bytes), test_x)
        plain_top1 = top1(open_converted(plain_bytes), test_x)
        lat = interleaved_latency(
            {"float32": float_bytes, "edgegap": edgegap_bytes, "plain": plain_bytes},
            threads,
            args.iterations,
            args.warmup,
        )
    med = {k: float(np.median(v)) for k, v in lat.items()}

    fb = result.fallback
    if fb is None:
        fallback = f"not needed (int8 drop {result.plain_accuracy.drop:.2%} within {profile.budgets.max_accuracy_drop:.0%})"
    elif fb.passed:
        fallback = f"{len(fb.float_layers)} layer(s) kept in float: {', '.join(e.label for e in fb.float_layers)}"
    else:
        fallback = f"failed: {fb.reason}"
    print(
        f"edgegap x86-avx2 ({profile.quantization.scheme.value}, {profile.quantization.input_dtype.value} I/O): "
        f"float fallback {fallback}; gates {'passed' if result.passed else 'FAILED: ' + result.reason}"
    )
    print(
        f"float32 TFLite vs Keras top-1 agreement: {np.mean(float_tflite_top1 == float_top1):.2%}"
    )
    print()
    rows = [
        ("float32 TFLite", float_bytes, float_tflite_top1, "float32"),
        ("edgegap int8 (x86-avx2)", edgegap_bytes, edgegap_top1, "edgegap"),
        ("plain TFLiteConverter PTQ", plain_bytes, plain_top1, "plain"),
    ]
    print(
        f"{'model':28} {'bytes':>10} {'size/fp32':>10} {'agree w/ float':>15} {'top-1 acc':>10} {'p50 ms':>9}"
    )
    for label, blob, pred, key in rows:
        print(
            f"{label:28} {len(blob):>10,} {len(blob) / len(float_bytes):>10.3f} "
            f"{np.mean(pred == float_top1):>15.2%} {np.mean(pred == data.test_y):>10.2%} {med[key]:>9.4f}"
        )
    print()
    print(
        f"latency: LiteRT on {host_arch()}, {threads} thread(s), {args.iterations} interleaved iterations per "
        f"model, medians: float32 {med['float32']:.4f} ms, edgegap int8 {med['edgegap']:.4f} ms, "
        f"plain PTQ {med['plain']:.4f} ms"
    )
    print(
        f"plain PTQ:  int8/fp32 size ratio {len(plain_bytes) / len(float_bytes):.3f}, top-1 agreement "
        f"{np.mean(plain_top1 == float_top1):.2%}, int8/fp32 latency ratio {med['plain'] / med['float32']:.3f}"
    )
    print(
        f"edgegap:    int8/fp32 size ratio {len(edgegap_bytes) / len(float_bytes):.3f} (goal <= 0.27), top-1 "
        f"agreement {np.mean(edgegap_top1 == float_top1):.2%} (goal >= 99%)"
    )
    print(
        f"edgegap int8/fp32 latency ratio (interleaved medians): {med['edgegap'] / med['float32']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
