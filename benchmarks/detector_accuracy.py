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
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

logger = logging.getLogger(__name__)

WEIGHTS = Path(__file__).resolve().parents[1] / "converter" / "zoo" / "weights" / "detector.keras"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=WEIGHTS)
    ap.add_argument("--count", type=int, default=300, help="test images")
    ap.add_argument("--calibration", type=int, default=200, help="calibration images (train split)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import keras

    from converter.evaluation import coco_map
    from converter.loading import quiet_native_stderr
    from converter.tasks.detector_config import read_sidecar
    from converter.tasks.ssd import (
        convert,
        detections_from_raw,
        export_saved_model,
        run_tflite_detector,
    )
    from converter.zoo.detection_data import generate
    from converter.zoo.detector import normalize

    cfg, doc = read_sidecar(args.model)
    model = keras.models.load_model(args.model, compile=False)
    test = list(generate("test", args.count, seed=args.seed, size=cfg.input_size))
    calib = list(generate("train", args.calibration, seed=args.seed, size=cfg.input_size))
    x_test = normalize(np.stack([s.image for s in test]), cfg)
    x_cal = normalize(np.stack([s.image for s in calib]), cfg)
    gt_b, gt_c = [s.boxes for s in test], [s.classes for s in test]

    rows = []
    box, logits = model.predict(x_test, batch_size=32, verbose=0)
    keras_map = coco_map(gt_b, gt_c, detections_from_raw(box, logits, cfg), cfg.num_classes)
    rows.append(("Keras float32 (NumPy post-process)", "-", keras_map))
    with tempfile.TemporaryDirectory() as tmp, quiet_native_stderr():
        saved = export_saved_model(model, cfg, Path(tmp) / "saved")
        t0 = time.perf_counter()
        float_bytes = convert(saved)
        int8_bytes = convert(saved, list(x_cal), input_type="int8")
        convert_s = time.perf_counter() - t0
        float_map = coco_map(gt_b, gt_c, run_tflite_detector(float_bytes, x_test), cfg.num_classes)
        int8_map = coco_map(gt_b, gt_c, run_tflite_detector(int8_bytes, x_test), cfg.num_classes)
    rows.append(
        (
            "TFLite float32 + TFLite_Detection_PostProcess",
            f"{len(float_bytes) / 1024:.0f} KiB",
            float_map,
        )
    )
    rows.append(
        (
            "TFLite int8 + TFLite_Detection_PostProcess",
            f"{len(int8_bytes) / 1024:.0f} KiB",
            int8_map,
        )
    )

    print(
        f"model: {args.model} (input {cfg.input_size}x{cfg.input_size}, width {cfg.width}, "
        f"{cfg.anchors.count} anchors, classes {', '.join(cfg.classes)})"
    )
    print(
        f"data: {args.count} test images (seed {args.seed}); int8 calibrated on {args.calibration} train images; "
        f"conversions took {convert_s:.1f} s"
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


if __name__ == "__main__":
    main()
