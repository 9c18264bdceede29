"""Writing the model input in place: preprocessing into the interpreter's own input buffer
(`LoadedModel.write_input`, what the agent does on the inference thread) against preprocessing
into a new array and copying it in with set_input, interleaved in one run.

Each iteration sleeps a camera frame period first (30 fps), so caches are as cold as they are
between real frames, then times preprocessing plus the input write, then an invoke (so the
interpreter's memory traffic sits between iterations as it does in the agent).

Usage:
  python benchmarks/input_write.py --bundle DIR [--sizes 224x224,640x480] [--iterations 300]

Ratios are printed last, absolute times beside them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.bundle.loading import load_bundle  # noqa: E402
from agent.preprocess import Preprocessor  # noqa: E402
from agent.runtime import open_model  # noqa: E402


def _sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(w), int(h)) for w, h in (s.lower().split("x") for s in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes like 640x480,224x224, got {text!r}"
        ) from None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument(
        "--sizes", type=_sizes, default=[(224, 224), (640, 480)], help="Source frame sizes."
    )
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--fps", type=float, default=30.0)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    model = open_model(bundle.model_bytes())
    pre = Preprocessor(bundle.manifest.input)
    rng = np.random.default_rng(0)
    period = 1.0 / args.fps

    def copied(frame: np.ndarray) -> None:
        model.set_input(pre(frame)[0])

    def in_place(frame: np.ndarray) -> None:
        model.write_input(lambda buf: pre(frame, buf)[1])

    ways = {"set_input copy": copied, "in place": in_place}
    lines = []
    for w, h in args.sizes:
        frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(8)]
        times: dict[str, list[float]] = {name: [] for name in ways}
        for i in range(args.iterations):
            order = list(ways.items()) if i % 2 else list(reversed(ways.items()))
            for name, fn in order:
                time.sleep(period)
                t0 = time.perf_counter()
                fn(frames[i % len(frames)])
                times[name].append(time.perf_counter() - t0)
                model.invoke()
        med = {name: 1e3 * statistics.median(v) for name, v in times.items()}
        print(f"[source {w}x{h}] preprocess + input write, median of {args.iterations} paced at {args.fps:g} fps: "
              + ", ".join(f"{name} {ms:.3f} ms" for name, ms in med.items()))  # fmt: skip
        lines.append(f"[source {w}x{h}] in place / set_input copy: {med['in place'] / med['set_input copy']:.3f}"
                     f"  ({med['in place']:.3f} ms vs {med['set_input copy']:.3f} ms)")  # fmt: skip
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
