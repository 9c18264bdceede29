"""What `edgegap convert --fold-bgr` saves on the device: the agent's preprocessing of a BGR frame
for a model that takes RGB (swap the channels, then map the pixels: two passes) against a model
with the swap folded into its first convolution (map the pixels: one pass), interleaved in one run.

Both bundles are the reference detector converted for x86-avx2, one with --fold-bgr. Each
iteration sleeps a camera frame period (30 fps), so caches are as cold as between real frames, then
for each bundle in turn (order alternating) times the agent's preprocessing of the frame into the
interpreter's own input buffer, and invokes the model (so its memory traffic sits between frames
as in the agent). The two bundles' detections on the same frames are compared too: the fold
must not change what the model finds.

Usage:
  python benchmarks/fold_bgr.py [--rgb DIR --bgr DIR | --keep DIR] [--sizes 224x224,640x480]
                                [--iterations 300]

Without --rgb/--bgr both bundles are converted first (about a minute). Ratios are printed last,
absolute times beside them.
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

from agent.bundle import Bundle, load_bundle  # noqa: E402
from agent.decoders import BBox, make_decoder  # noqa: E402
from agent.preprocess import Preprocessor, dequantize  # noqa: E402
from agent.runtime import LoadedModel, open_model  # noqa: E402


def _sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(w), int(h)) for w, h in (s.lower().split("x") for s in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 640x480,224x224, got {text!r}") from None


def convert_both(work: Path) -> tuple[Path, Path]:
    """The reference detector converted twice the way agent_overhead.py converts it, plain and
    with --fold-bgr; each lands in work/<rgb|bgr>/reference-bundle."""
    from agent_overhead import convert_reference

    out = []
    for name, fold in (("rgb", False), ("bgr", True)):
        (work / name).mkdir(parents=True, exist_ok=True)
        bundle = convert_reference(work / name, fold_bgr=fold)
        if bundle is None:
            sys.exit(f"converting the {name} bundle failed")
        out.append(bundle)
    return out[0], out[1]


class Served:
    """A bundle as the agent serves it: its preprocessing, interpreter and decoder."""

    def __init__(self, bundle: Bundle) -> None:
        self.manifest = bundle.manifest
        self.model: LoadedModel = open_model(bundle.model_bytes(), 1)
        self.pre = Preprocessor(bundle.manifest.input)
        self.decoder = make_decoder(bundle.manifest)

    def prepare(self, frame: np.ndarray) -> float:
        t0 = time.perf_counter()
        self.model.write_input(lambda buf: self.pre(frame, buf)[1])
        return time.perf_counter() - t0

    def detect(self, frame: np.ndarray) -> list[tuple[int, float, list[float]]]:
        transform = self.model.write_input(lambda buf: self.pre(frame, buf)[1])
        self.model.invoke()
        outs = {
            o.role: dequantize(self.model.get(o.index), o.scale, o.zero_point) for o in self.manifest.outputs
        }
        return [(d.class_id, d.score, _corners(d.box)) for d in self.decoder(outs, transform)]


def _corners(box: BBox | None) -> list[float]:
    return [] if box is None else [box.xmin, box.ymin, box.xmax, box.ymax]


def agreement(rgb: Served, bgr: Served, frames: list[np.ndarray]) -> str:
    same, score_diff, box_diff = 0, 0.0, 0.0
    for frame in frames:
        a, b = rgb.detect(frame), bgr.detect(frame)
        if [d[0] for d in a] == [d[0] for d in b]:
            same += 1
            for (_, sa, ba), (_, sb, bb) in zip(a, b, strict=True):
                score_diff = max(score_diff, abs(sa - sb))
                box_diff = max(box_diff, float(np.abs(np.subtract(ba, bb)).max()))
    return (f"same classes in the same order on {same} of {len(frames)} frames; there, scores differ by at most "
            f"{score_diff:.3f} and box corners by at most {box_diff:.2f} source pixels")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rgb", type=Path, help="Bundle converted without --fold-bgr.")
    ap.add_argument("--bgr", type=Path, help="The same model converted with --fold-bgr.")
    ap.add_argument("--sizes", type=_sizes, default=[(224, 224), (640, 480)], help="Source frame sizes.")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--keep", type=Path, help="Convert into this folder and keep the bundles there.")
    ap.add_argument("--fps", type=float, default=30.0)
    args = ap.parse_args()
    if (args.rgb is None) != (args.bgr is None):
        ap.error("give both --rgb and --bgr, or neither")
    with tempfile.TemporaryDirectory(prefix="edgegap-fold-") as tmp:
        work = Path(tmp)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        rgb_dir, bgr_dir = (args.rgb, args.bgr) if args.rgb else convert_both(work)
        rgb, bgr = Served(load_bundle(rgb_dir)), Served(load_bundle(bgr_dir))
    if rgb.manifest.input.color_order.value != "rgb" or bgr.manifest.input.color_order.value != "bgr":
        sys.exit("--rgb must take RGB and --bgr BGR (convert it with --fold-bgr)")
    from converter.zoo.detection_data import generate

    test = [cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR) for s in generate("test", 60, size=224)]
    lines = []
    for w, h in args.sizes:
        frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in test]
        print(f"[{w}x{h}] {agreement(rgb, bgr, frames)}")
        times: dict[str, list[float]] = {"rgb": [], "bgr": []}
        for i in range(args.iterations):
            frame = frames[i % len(frames)]
            order = (("rgb", rgb), ("bgr", bgr)) if i % 2 == 0 else (("bgr", bgr), ("rgb", rgb))
            for name, served in order:
                time.sleep(1.0 / args.fps)
                times[name].append(served.prepare(frame))
                served.model.invoke()
        r, b = (1000.0 * statistics.median(times[k]) for k in ("rgb", "bgr"))
        lines.append(f"[{w}x{h}] pre ratio (folded BGR / RGB model, {args.iterations} paced frames each): "
                     f"{b / r:.3f}  (pre {b:.3f} ms vs {r:.3f} ms)")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
