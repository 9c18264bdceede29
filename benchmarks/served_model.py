"""The model and the clips the agent benchmarks serve.

Without a given bundle, the reference detector (converter/zoo/weights/detector.keras) converted
by `edgegap convert --profile x86-avx2` (int8, RGB, calibrated on 100 train-split images); when
that file is missing, a stand-in of realistic size (MobileNetV2 width 0.5 at 256 px with an SSD
head and TFLite_Detection_PostProcess, random weights), said loudly. The clips are MJPG at 30 fps
of the detector's held-out test split.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.bundle.golden import record_golden  # noqa: E402
from agent.bundle.loading import write_bundle  # noqa: E402
from agent.bundle.manifest import Decoder, InputSpec, Manifest, ModelFile, OutputRole, OutputSpec  # noqa: E402
from agent.runtime import open_model  # noqa: E402

logger = logging.getLogger(__name__)

REFERENCE = ROOT / "converter" / "zoo" / "weights" / "detector.keras"
SIZE = 256
CLASSES = 10


def model_size() -> int:
    """The reference detector's input side (its sidecar), or the stand-in's."""
    if not REFERENCE.is_file():
        return SIZE
    from converter.tasks.detector_config import read_sidecar

    return read_sidecar(REFERENCE)[0].input_size


def render_video(path: Path, size: tuple[int, int], frames: int = 90) -> Path:
    """An MJPG clip at 30 fps of held-out test-split images, resized to size (w, h)."""
    from converter.zoo.detection_data import generate

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    for s in generate("test", frames, size=model_size()):
        bgr = cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR)
        same = (bgr.shape[1], bgr.shape[0]) == size
        writer.write(bgr if same else cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR))
    writer.release()
    return path


def convert_reference(work: Path) -> Path | None:
    """The reference detector converted by `edgegap convert` (int8, x86-avx2), calibrated on the
    train split; None (with the reason) on failure."""
    from converter.zoo.detection_data import generate, write_folder

    calib, size = work / "calib", model_size()
    calib.mkdir()
    for i, s in enumerate(generate("train", 100, size=size)):
        cv2.imwrite(str(calib / f"{i:03d}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
    write_folder(work / "val", list(generate("val", 100, size=size)))
    out = work / "reference-bundle"
    cmd = [sys.executable, "-m", "converter", "convert", str(REFERENCE), "--profile", "x86-avx2",
           "--calibration", str(calib), "--validation", str(work / "val"), "--task", "auto",
           "--output", str(out)]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0 or not (out / "manifest.json").is_file():
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"note: converting the reference detector failed ({tail[0]}); using the stand-in")
        return None
    return out


def bundle_to_serve(given: Path | None, work: Path) -> tuple[Path, str]:
    """The given bundle, else the reference detector converted now, else the stand-in (said
    loudly); with what it is, for the report."""
    if given is not None:
        return given, "given bundle"
    if REFERENCE.is_file() and (converted := convert_reference(work)) is not None:
        return converted, "reference detector, int8 x86-avx2 (converted now)"
    print(
        "note: STAND-IN MODEL: MobileNetV2 width 0.5 at 256 px + SSD head + "
        "TFLite_Detection_PostProcess,\n      int8, random weights (no reference detector)"
    )
    return build_stand_in(work), "stand-in MobileNetV2-SSD (random weights)"


def _stand_in_tflite(work: Path) -> bytes:
    """MobileNetV2 (width 0.5, 256 px) + SSD head on two maps + TFLite_Detection_PostProcess, int8."""
    import keras
    import tensorflow as tf

    from agent.geometry.anchors import grid_anchors

    # fmt: off
    anchors = grid_anchors({"feature_maps": [16, 8], "scales": [0.2, 0.5], "aspect_ratios": [1.0, 2.0, 0.5]})
    backbone = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.5, include_top=False, weights=None)
    boxes, scores = [], []
    for name in ("block_13_expand_relu", "out_relu"):
        x = keras.layers.SeparableConv2D(128, 3, padding="same", activation="relu6")(backbone.get_layer(name).output)
        b = keras.layers.Conv2D(12, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(x)
        c = keras.layers.Conv2D(3 * (CLASSES + 1), 1, bias_initializer=keras.initializers.Constant(-4.0))(x)
        boxes.append(keras.layers.Reshape((-1, 4))(b))
        scores.append(keras.layers.Reshape((-1, CLASSES + 1))(c))
    # fmt: on
    cls = keras.layers.Activation("sigmoid")(keras.layers.Concatenate(axis=1)(scores))
    heads = keras.Model(backbone.input, [keras.layers.Concatenate(axis=1)(boxes), cls])
    attrs = {
        "max_detections": "i: 20", "max_classes_per_detection": "i: 1", "detections_per_class": "i: 100",
        "use_regular_nms": "b: false", "nms_score_threshold": "f: 0.3", "nms_iou_threshold": "f: 0.5",
        "y_scale": "f: 10.0", "x_scale": "f: 10.0", "h_scale": "f: 5.0", "w_scale": "f: 5.0",
        "num_classes": f"i: {CLASSES}",
    }  # fmt: skip
    implements = 'name: "TFLite_Detection_PostProcess"' + "".join(
        f' attr {{ key: "{k}" value {{ {v} }} }}' for k, v in attrs.items()
    )

    @tf.function(experimental_implements=implements)
    def post(box_encodings: Any, class_predictions: Any, anchor_tensor: Any) -> Any:
        zero = tf.constant(0.0, dtype=tf.float32)
        return zero, zero, zero, zero

    archive = keras.export.ExportArchive()
    archive.track(heads)
    archive.add_endpoint(
        name="serve",
        fn=lambda x: post(*heads(x), tf.constant(anchors)),
        input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)],
    )
    archive.write_out(str(work / "saved"), verbose=False)
    rng = np.random.default_rng(0)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(work / "saved"))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: (
        [rng.random((1, SIZE, SIZE, 3), dtype=np.float32) * 2 - 1] for _ in range(16)
    )
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.allow_custom_ops = True
    return bytes(conv.convert())


def build_stand_in(work: Path) -> Path:
    """The stand-in model written as a bundle, with its golden check."""
    content = _stand_in_tflite(work)
    model = open_model(content)
    inp = model.inputs[0]
    order = (OutputRole.BOXES, OutputRole.CLASSES, OutputRole.SCORES, OutputRole.COUNT)
    roles = {f":{i}": role for i, role in enumerate(order)}
    outputs = [
        OutputSpec(name=o.name, index=o.index, role=roles[o.name[o.name.rindex(":") :]],
                   shape=list(o.shape), dtype=o.dtype.name)
        for o in model.outputs
    ]  # fmt: skip
    manifest = Manifest(
        name="standin-mobilenetv2-ssd", version=1, profile="x86-avx2",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), task="detection",
        decoder=Decoder.SSD_POSTPROCESS,
        model=ModelFile(sha256=hashlib.sha256(content).hexdigest(), size=len(content)),
        input=InputSpec(name=inp.name, shape=list(inp.shape), dtype=inp.dtype.name, scale=inp.scale,
                        zero_point=inp.zero_point, mean=[127.5], std=[127.5]),
        outputs=outputs, labels=[str(i) for i in range(CLASSES)],
    )  # fmt: skip
    manifest = manifest.model_copy(update={"golden": record_golden(model, manifest)})
    return write_bundle(work / "standin-bundle", content, manifest).path
