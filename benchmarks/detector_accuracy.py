"""Detector accuracy: float vs int8 mAP of the committed reference detector on the test split.

The float and int8 models are both converted TFLite models with the same TFLite_Detection_PostProcess
op, so the drop measures quantization alone. The Keras float model (decoded by the NumPy twin of
the op) is printed too. Calibration uses training images; scoring uses the held-out test split.

    .venv/bin/python benchmarks/detector_accuracy.py [--count 300] [--calibration 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from converter.evaluation import MapResult
    from converter.tasks.detector_config import DetectorConfig

logger = logging.getLogger(__name__)

WEIGHTS = Path(__file__).resolve().parents[1] / "converter" / "zoo" / "weights" / "detector.keras"


Row = tuple[str, str, "MapResult"]


@dataclass
class Split:
    """The held-out test images with their ground truth, and the calibration inputs."""

    x_test: np.ndarray
    x_cal: np.ndarray
    gt_b: list[np.ndarray]
    gt_c: list[np.ndarray]


@dataclass
class Converted:
    """The float and int8 TFLite detectors' mAP, sizes and the time the two conversions took."""

    float_bytes: bytes
    int8_bytes: bytes
    float_map: MapResult
    int8_map: MapResult
    convert_s: float


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=WEIGHTS)
    ap.add_argument("--count", type=int, default=300, help="test images")
    ap.add_argument("--calibration", type=int, default=200, help="calibration images (train split)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def load_split(cfg: DetectorConfig, args: argparse.Namespace) -> Split:
    """Generate the test split and the calibration images, normalized as the detector expects."""
    from converter.zoo.detection_data import generate
    from converter.zoo.detector import normalize

    test = list(generate("test", args.count, seed=args.seed, size=cfg.input_size))
    calib = list(generate("train", args.calibration, seed=args.seed, size=cfg.input_size))
    x_test = normalize(np.stack([s.image for s in test]), cfg)
    x_cal = normalize(np.stack([s.image for s in calib]), cfg)
    return Split(x_test, x_cal, [s.boxes for s in test], [s.classes for s in test])


def keras_map(model: Any, cfg: DetectorConfig, split: Split) -> MapResult:
    """mAP of the Keras float model, decoded by the NumPy twin of the post-process op."""
    from converter.evaluation import coco_map
    from converter.tasks.ssd import detections_from_raw

    box, logits = model.predict(split.x_test, batch_size=32, verbose=0)
    return coco_map(split.gt_b, split.gt_c, detections_from_raw(box, logits, cfg), cfg.num_classes)


def convert_and_score(model: Any, cfg: DetectorConfig, split: Split) -> Converted:
    """Convert to float32 and int8 TFLite (timed) and score both on the test split."""
    from converter.evaluation import coco_map
    from converter.loading import quiet_native_stderr
    from converter.tasks.ssd import convert, export_saved_model, run_tflite_detector

    gt_b, gt_c, x_test = split.gt_b, split.gt_c, split.x_test
    with tempfile.TemporaryDirectory() as tmp, quiet_native_stderr():
        saved = export_saved_model(model, cfg, Path(tmp) / "saved")
        t0 = time.perf_counter()
        float_bytes = convert(saved)
        int8_bytes = convert(saved, list(split.x_cal), input_type="int8")
        convert_s = time.perf_counter() - t0
        float_map = coco_map(gt_b, gt_c, run_tflite_detector(float_bytes, x_test), cfg.num_classes)
        int8_map = coco_map(gt_b, gt_c, run_tflite_detector(int8_bytes, x_test), cfg.num_classes)
    return Converted(float_bytes, int8_bytes, float_map, int8_map, convert_s)


def result_rows(keras_float: MapResult, conv: Converted) -> list[Row]:
    return [
        ("Keras float32 (NumPy post-process)", "-", keras_float),
        (
            "TFLite float32 + TFLite_Detection_PostProcess",
            f"{len(conv.float_bytes) / 1024:.0f} KiB",
            conv.float_map,
        ),
        (
            "TFLite int8 + TFLite_Detection_PostProcess",
            f"{len(conv.int8_bytes) / 1024:.0f} KiB",
            conv.int8_map,
        ),
    ]


def print_report(
    args: argparse.Namespace, cfg: DetectorConfig, rows: list[Row], conv: Converted
) -> None:
    """The model and data, the mAP table, per-class AP and the float -> int8 drops (goal last)."""
    float_map, int8_map = conv.float_map, conv.int8_map
    print(
        f"model: {args.model} (input {cfg.input_size}x{cfg.input_size}, width {cfg.width}, "
        f"{cfg.anchors.count} anchors, classes {', '.join(cfg.classes)})"
    )
    print(
        f"data: {args.count} test images (seed {args.seed}); int8 calibrated on {args.calibration} train images; "
        f"conversions took {conv.convert_s:.1f} s"
    )
    print(f"{'model':<48} {'size':>9} {'mAP@0.5':>8} {'mAP@.5:.95':>10}")
    for name, size, m in rows:
        print(f"{name:<48} {size:>9} {m.map50:>8.4f} {m.map50_95:>10.4f}")
    per_class = "  ".join(
        f"{cfg.classes[c]} {float_map.per_class_ap50.get(c, float('nan')):.3f}/{int8_map.per_class_ap50.get(c, float('nan')):.3f}"
        for c in range(cfg.num_classes)
    )
    print(f"AP@0.5 per class (float/int8): {per_class}")
    drop = (float_map.map50 - int8_map.map50) * 100
    drop95 = (float_map.map50_95 - int8_map.map50_95) * 100
    print(f"mAP@0.5:0.95 drop float -> int8: {drop95:+.2f} points")
    print(f"mAP@0.5 drop float -> int8: {drop:+.2f} points (goal <= 1.00)")


def main() -> None:
    args = parse_args()

    import keras

    from converter.tasks.detector_config import read_sidecar

    cfg, _doc = read_sidecar(args.model)
    model = keras.models.load_model(args.model, compile=False)
    split = load_split(cfg, args)
    float_keras = keras_map(model, cfg, split)
    conv = convert_and_score(model, cfg, split)
    print_report(args, cfg, result_rows(float_keras, conv), conv)


if __name__ == "__main__":
    main()
