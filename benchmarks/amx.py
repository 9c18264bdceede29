"""What Intel AMX does to XNNPACK's speed on this host: the same models timed with AMX in use and
with it withheld (`edgegap-agent run --amx withhold`), side by side in one run.

Withholding cannot be undone in a process, so two worker processes hold the same interpreters,
one of them with AMX withheld before its first model (agent.runtime.timing.compare_amx, which the
agent's `runtime.amx: auto` uses too). They take turns: a block of invokes of every model in one
worker, then the same block in the other, the order alternating round by round; only one worker
runs at a time. Medians over all blocks are compared.

The models are the reference detector (raw head outputs, 224x224) and the same detector with
50% of its channels pruned (kept counts rounded to 16, not fine-tuned: weights do not change
speed), each as int8 and as float32 TFLite; then, for wide layers, keras.applications'
MobileNetV2 and ResNet50 (224x224, random weights) in int8 (--skip-arch leaves them out).

Usage:
  python benchmarks/amx.py [--rounds 30] [--block 10] [--threads 1] [--skip-arch]

Per-model medians are printed first; ratios last: pruned/dense in each mode, then withheld/in use.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.runtime.amx import cpu_has_amx  # noqa: E402
from agent.runtime.timing import compare_amx  # noqa: E402

REFERENCE = ROOT / "converter" / "zoo" / "weights" / "detector.keras"
DETECTOR = ("dense int8", "pruned int8", "dense float32", "pruned float32")
MODES = ("in use", "withheld")


def build(work: Path, arch: bool) -> dict[str, Path]:
    import keras

    from converter.pruning import make_plan, rebuild
    from converter.pruning.latency import to_float_tflite, to_int8_tflite

    dense = keras.models.load_model(REFERENCE, compile=False)
    pruned = rebuild(make_plan(dense, 0.5, round_to=16))
    calib = np.random.default_rng(0).uniform(0, 1, (8, 224, 224, 3)).astype(np.float32)
    blobs = [to_int8_tflite(dense, calib), to_int8_tflite(pruned, calib), to_float_tflite(dense), to_float_tflite(pruned)]
    models = dict(zip(DETECTOR, blobs, strict=True))
    if arch:
        for name in ("MobileNetV2", "ResNet50"):
            app = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
            models[f"{name} int8"] = to_int8_tflite(app, calib * 2 - 1)
    paths = {}
    for name, blob in models.items():
        paths[name] = work / (name.replace(" ", "_") + ".tflite")
        paths[name].write_bytes(blob)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30, help="Blocks per worker.")
    ap.add_argument("--block", type=int, default=10, help="Invokes of every model per block.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-arch", action="store_true", help="Time the reference detector only.")
    args = ap.parse_args()
    if not cpu_has_amx():
        sys.exit("this CPU has no AMX: there is nothing to withhold, and nothing to compare")
    with tempfile.TemporaryDirectory(prefix="edgegap-amx-") as tmp:
        built = build(Path(tmp), not args.skip_arch)
        names = list(built)
        cmp = compare_amx([p.read_bytes() for p in built.values()], args.threads, args.rounds, args.block, warmup=5)
    in_use, withheld = cmp.medians()
    ms = {"in use": in_use, "withheld": withheld}
    n = args.rounds * args.block
    print(f"224x224 models (detector: raw head outputs), {cmp.backend}, {args.threads} thread(s), "
          f"median of {n} invokes per model and mode (blocks of {args.block}, modes alternating)")  # fmt: skip
    print(f"  {'model':18} {'AMX in use':>11} {'AMX withheld':>13}")
    for i, name in enumerate(names):
        print(f"  {name:18} {in_use[i]:8.3f} ms {withheld[i]:10.3f} ms")
    print()
    print("ratios:")
    for mode in MODES:
        for kind, (d, q) in (("int8", (0, 1)), ("float32", (2, 3))):
            print(f"  pruned/dense {kind}, AMX {mode}: {ms[mode][q] / ms[mode][d]:.3f}  "
                  f"({ms[mode][q]:.3f} ms vs {ms[mode][d]:.3f} ms)")  # fmt: skip
    for i, name in enumerate(names):
        print(f"  {name}, AMX withheld/in use: {withheld[i] / in_use[i]:.3f}  "
              f"({withheld[i]:.3f} ms vs {in_use[i]:.3f} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
