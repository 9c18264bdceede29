"""What one convolution costs in int8 and in float32 on this CPU, by shape: why channel pruning of
a narrow network's early layers saves little time, and why int8 can lose to float32 here.

Each case is a single Conv2D + ReLU6 Keras model, converted to float32 TFLite and to int8 TFLite
(int8 input and output, the way edgegap's int8 profiles convert), run with LiteRT's default
delegate (XNNPACK) on 1 thread. All models are invoked interleaved, round after round, and the
medians are compared.

Usage:
  python benchmarks/conv_cost.py [--rounds 200]

The per-case times and int8/float32 ratios are printed first; the ratios last: for each kind of
layer, its int8 time at each width divided by its int8 time at width 16; then, for layers of equal
MACs at the detector's 56, 28 and 14 px stages, the int8 time at each size divided by that at
14 px: what a MAC costs where in the network, which MAC counts alone do not say.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.amx import WITHHOLD_HELP, withhold_amx  # noqa: E402
from converter.timing import time_interleaved  # noqa: E402

# (kind, input channels, output channels, input size, stride): the reference detector's stem, then
# each kind of layer its stages are made of, at 56 px, over the widths pruning moves between (a
# depthwise convolution has as many outputs as inputs). Cases shared by two sweeps run once.
Case = tuple[str, int, int, int, int]
WIDTHS = (8, 16, 32, 48, 64, 96, 128)
SWEEPS: dict[str, list[Case]] = {
    "conv3x3, output channels": [("conv3x3", 16, c, 56, 1) for c in WIDTHS],
    "conv1x1, output channels": [("conv1x1", 16, c, 56, 1) for c in WIDTHS],
    "conv1x1, input channels": [("conv1x1", c, 16, 56, 1) for c in WIDTHS],
    "depthwise3x3, channels": [("depthwise3x3", c, c, 56, 1) for c in WIDTHS],
}
# Equal MACs at each stage's resolution, the channels growing as the map shrinks, as they do in
# the detector: a 1x1 convolution of 7.2 M MACs and a depthwise one of 0.68 M.
SIZES = (56, 28, 14)
BY_SIZE: dict[str, list[Case]] = {
    "conv1x1, 7.2 M MACs": [("conv1x1", 24 * 56 // s, 96 * 56 // s, s, 1) for s in SIZES],
    "depthwise3x3, 0.68 M MACs": [
        ("depthwise3x3", 24 * (56 // s) ** 2, 24 * (56 // s) ** 2, s, 1) for s in SIZES
    ],
}
CASES: list[Case] = [
    ("conv3x3", 3, 16, 224, 2),
    *dict.fromkeys(c for sweep in (*SWEEPS.values(), *BY_SIZE.values()) for c in sweep),
]


def _label(case: Case) -> str:
    kind, cin, cout, size, stride = case
    return f"{kind:>12} {cin:>3}->{cout:<3} at {size} px" + (
        f", stride {stride}" if stride != 1 else ""
    )


def _layer(case: Case) -> Any:
    import keras

    kind, _, cout, _, stride = case
    if kind == "depthwise3x3":
        return keras.layers.DepthwiseConv2D(3, strides=stride, padding="same")
    return keras.layers.Conv2D(cout, 3 if kind == "conv3x3" else 1, strides=stride, padding="same")


def _convert(case: Case, quantized: bool) -> bytes:
    """float32 TFLite, or int8 through the pruning code's own int8 conversion (int8 input and output)."""
    import keras

    from converter.pruning.latency import to_float_tflite, to_int8_tflite

    _, cin, _, size, _ = case
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, cin))
    model = keras.Model(inp, keras.layers.ReLU(6.0)(_layer(case)(inp)))
    if quantized:
        samples = np.random.default_rng(0).random((16, size, size, cin), dtype=np.float32)
        return to_int8_tflite(model, samples, calibration_steps=16)
    return to_float_tflite(model)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=200, help="Interleaved invokes of every model.")
    ap.add_argument("--withhold-amx", action="store_true", help=WITHHOLD_HELP)
    args = ap.parse_args()
    if args.withhold_amx:
        withhold_amx()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    keys = [(case, kind) for case in CASES for kind in ("float32", "int8")]
    timed = time_interleaved(
        [_convert(case, kind == "int8") for case, kind in keys], runs=args.rounds, warmup=1
    )
    ms = {k: statistics.median(t) for k, t in zip(keys, timed.samples, strict=True)}
    print(f"{timed.backend}, 1 thread, {timed.amx}, median of {args.rounds} interleaved invokes")
    for case in CASES:
        f, q = ms[(case, "float32")], ms[(case, "int8")]
        print(f"{_label(case)}: float32 {f:.3f} ms, int8 {q:.3f} ms, int8/float32 {q / f:.2f}")
    print("int8 time at each width / int8 time at width 16 (56 px):")
    for name, sweep in SWEEPS.items():
        base = ms[(sweep[WIDTHS.index(16)], "int8")]
        cells = "  ".join(
            f"{w}: {ms[(c, 'int8')] / base:.2f}" for w, c in zip(WIDTHS, sweep, strict=True)
        )
        print(f"  {name} (16: {base:.3f} ms): {cells}")
    print("int8 time at each size / int8 time at 14 px (equal MACs):")
    for name, sweep in BY_SIZE.items():
        base = ms[(sweep[-1], "int8")]
        cells = "  ".join(
            f"{s} px: {ms[(c, 'int8')] / base:.2f}" for s, c in zip(SIZES, sweep, strict=True)
        )
        print(f"  {name} (14 px: {base:.3f} ms): {cells}")


if __name__ == "__main__":
    main()
