"""What folding the color swap into the model saves on the device: the agent's preprocessing of a
BGR frame for a model that takes RGB (swap the channels, then map the pixels: two passes) against
the same model with the swap folded into its first convolution (map the pixels: one pass),
interleaved in one run.

The fold is the agent's own (agent.runtime.bgr_fold, `runtime.fold_bgr`, on by default), done in memory
when the bundle loads; `edgegap convert --fold-bgr` makes the same change on the host. Each
iteration sleeps a camera frame period (30 fps), so caches are as cold as between real frames,
then for each variant in turn (order alternating) times the agent's preprocessing of the frame
into the interpreter's own input buffer, and invokes the model (so its memory traffic sits
between frames as in the agent). Both variants' detections on the same frames are compared too:
the fold must not change what the model finds.

Usage:
  python benchmarks/fold_bgr.py [--bundle DIR] [--sizes 224x224,640x480] [--iterations 300]

Without --bundle the reference detector is converted first (RGB, int8 x86-avx2, about 30 s).
Ratios are printed last, absolute times beside them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from agent_overhead import convert_reference  # noqa: E402

from agent.bundle.loading import Bundle, load_bundle  # noqa: E402
from agent.bundle.manifest import ColorOrder  # noqa: E402
from agent.decoders import BBox, make_decoder  # noqa: E402
from agent.preprocess import Preprocessor, dequantize  # noqa: E402
from agent.runtime import LoadedModel, open_model  # noqa: E402
from agent.runtime.bgr_fold import FoldRefused, bgr_input, fold_bgr  # noqa: E402


def _sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(w), int(h)) for w, h in (s.lower().split("x") for s in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes like 640x480,224x224, got {text!r}"
        ) from None


class Served:
    """A bundle as the agent serves it: its preprocessing, interpreter and decoder; with fold, the
    color swap folded into the model as `runtime.fold_bgr` does it."""

    def __init__(self, bundle: Bundle, fold: bool) -> None:
        self.manifest = bundle.manifest
        content, spec = bundle.model_bytes(), bundle.manifest.input
        if fold:
            content, spec = fold_bgr(content).content, bgr_input(spec)
        self.model: LoadedModel = open_model(content, 1)
        self.pre = Preprocessor(spec)
        self.decoder = make_decoder(bundle.manifest)

    def prepare(self, frame: np.ndarray) -> float:
        t0 = time.perf_counter()
        self.model.write_input(lambda buf: self.pre(frame, buf)[1])
        return time.perf_counter() - t0

    def detect(self, frame: np.ndarray) -> list[tuple[int, float, list[float]]]:
        transform = self.model.write_input(lambda buf: self.pre(frame, buf)[1])
        self.model.invoke()
        outs = {
            o.role: dequantize(self.model.get(o.index), o.scale, o.zero_point)
            for o in self.manifest.outputs
        }
        return [(d.class_id, d.score, _corners(d.box)) for d in self.decoder(outs, transform)]


def _corners(box: BBox | None) -> list[float]:
    return [] if box is None else [box.xmin, box.ymin, box.xmax, box.ymax]


def agreement(swapped: Served, folded: Served, frames: list[np.ndarray]) -> str:
    same = sum(swapped.detect(frame) == folded.detect(frame) for frame in frames)
    found = sum(len(swapped.detect(frame)) for frame in frames)
    return f"identical detections (classes, scores, boxes) on {same} of {len(frames)} frames ({found} detections)"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--bundle",
        type=Path,
        help="A bundle whose model takes RGB (default: convert the reference).",
    )
    ap.add_argument(
        "--sizes", type=_sizes, default=[(224, 224), (640, 480)], help="Source frame sizes."
    )
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--fps", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgegap-fold-") as tmp:
        bundle_dir = args.bundle or convert_reference(Path(tmp))
        if bundle_dir is None:
            sys.exit("converting the reference detector failed")
        bundle = load_bundle(bundle_dir)
    if bundle.manifest.input.color_order is not ColorOrder.RGB:
        sys.exit(
            f"{bundle_dir}: the model takes {bundle.manifest.input.color_order.value}; this compares RGB models"
        )
    try:
        variants = {"per frame": Served(bundle, fold=False), "folded": Served(bundle, fold=True)}
    except FoldRefused as exc:
        sys.exit(f"{bundle_dir}: the color swap cannot be folded into this model: {exc}")
    from converter.zoo.detection_data import generate

    test = [cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR) for s in generate("test", 60, size=224)]
    lines = []
    for w, h in args.sizes:
        frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in test]
        print(f"[{w}x{h}] {agreement(variants['per frame'], variants['folded'], frames)}")
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.iterations):
            frame = frames[i % len(frames)]
            for name in list(variants)[:: 1 if i % 2 == 0 else -1]:
                time.sleep(1.0 / args.fps)
                times[name].append(variants[name].prepare(frame))
                variants[name].model.invoke()
        swap, fold = (1000.0 * statistics.median(times[k]) for k in ("per frame", "folded"))
        lines.append(
            f"[{w}x{h}] pre ratio (swap folded in / swapped per frame, {args.iterations} paced frames each): "
            f"{fold / swap:.3f}  (pre {fold:.3f} ms vs {swap:.3f} ms)"
        )
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
