"""Models shaped like the ones people bring, built the way their authors build them: a small Keras
model converted with plain tf.lite.TFLiteConverter, never with edgegap. One builder per layout;
each writes a .tflite file and returns what a reference decode needs to know about it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 32  # every model takes [1, 32, 32, 3]
CLASSES = 3


def _keras() -> Any:
    import keras

    return keras


def _convert_keras(model: Any, quantize: bool) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        rng = np.random.default_rng(0)

        def data() -> Iterator[list[np.ndarray]]:
            for _ in range(16):
                yield [rng.uniform(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = data
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def _trunk(seed: int) -> tuple[Any, Any]:
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3), batch_size=1, name="image")
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(inp)
    return inp, keras.layers.Flatten()(x)


def classifier(path: Path) -> Path:
    """int8 in and out, softmax over CLASSES + 1 classes."""
    keras = _keras()
    inp, x = _trunk(11)
    out = keras.layers.Dense(CLASSES + 1, activation="softmax", name="probs")(x)
    path.write_bytes(_convert_keras(keras.Model(inp, out), quantize=True))
    return path


YOLO_BOXES = 20


def yolo_transposed(path: Path) -> Path:
    """[1, 4 + C, N] as Ultralytics exports: cx, cy, w, h normalized, then class scores; int8."""
    keras = _keras()
    inp, x = _trunk(12)
    y = keras.layers.Dense((4 + CLASSES) * YOLO_BOXES, activation="sigmoid")(x)
    out = keras.layers.Reshape((4 + CLASSES, YOLO_BOXES), name="output0")(y)
    path.write_bytes(_convert_keras(keras.Model(inp, out), quantize=True))
    return path


def landmarks(path: Path) -> Path:
    """Three outputs: 5 landmarks (x, y), a presence score, a 20x20 heatmap; float."""
    keras = _keras()
    inp, x = _trunk(13)
    pts = keras.layers.Dense(10, name="landmarks")(x)
    presence = keras.layers.Dense(1, activation="sigmoid", name="presence")(x)
    heat = keras.layers.Reshape((20, 20), name="heatmap")(keras.layers.Dense(400)(x))
    path.write_bytes(_convert_keras(keras.Model(inp, [pts, presence, heat]), quantize=False))
    return path


def nan_on_bright_frames(path: Path) -> Path:
    """sqrt(0.9 - channel mean): finite on mid-grey inputs, NaN on a bright frame."""
    import tensorflow as tf

    keras = _keras()
    inp = keras.Input((SIZE, SIZE, 3), batch_size=1, name="image")
    m = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Lambda(lambda t: tf.sqrt(0.9 - t), name="root")(m)
    path.write_bytes(_convert_keras(keras.Model(inp, out), quantize=False))
    return path


# --- raw-anchor detector, MediaPipe-style: xywh offsets in input pixels, keypoints ------------

RAW_KEYPOINTS = 3
ANCHOR_GENERATOR = {
    "input_size": [SIZE, SIZE],
    "strides": [8, 16, 16],
    "min_scale": 0.2,
    "max_scale": 0.6,
    "aspect_ratios": [1.0],
    "fixed_anchor_size": True,
}


def raw_anchors() -> np.ndarray:
    """The generator's anchors written out by hand, (x_center, y_center, w, h) as MediaPipe
    publishes them: 4x4 cells with 2 anchors, then 2x2 cells with 4 (two layers of stride 16)."""
    rows = []
    for fm, per_cell in ((4, 2), (2, 4)):
        for y in range(fm):
            for x in range(fm):
                rows += [((x + 0.5) / fm, (y + 0.5) / fm, 1.0, 1.0)] * per_cell
    return np.asarray(rows, np.float32)


def raw_detector(path: Path) -> Path:
    """regressors [1, A, 4 + 2K] (offsets and sizes in input pixels), classificators [1, A, 1]."""
    keras = _keras()
    inp, x = _trunk(14)
    a, width = len(raw_anchors()), 4 + 2 * RAW_KEYPOINTS
    bias = np.tile(np.asarray([0, 0, 9, 7] + [0] * 2 * RAW_KEYPOINTS, np.float32), a)
    small = keras.initializers.RandomNormal(stddev=0.05)
    reg = keras.layers.Dense(
        a * width, kernel_initializer=small, bias_initializer=keras.initializers.Constant(bias)
    )(x)
    reg = keras.layers.Reshape((a, width), name="regressors")(reg)
    cls = keras.layers.Reshape((a, 1), name="classificators")(keras.layers.Dense(a)(x))
    path.write_bytes(_convert_keras(keras.Model(inp, [reg, cls]), quantize=False))
    return path


# --- SSD with the TFLite_Detection_PostProcess op, TF Object Detection API style ---------------

SSD_ANCHORS = 32
SSD_ATTRS = {
    "max_detections": 10, "max_classes_per_detection": 1, "num_classes": CLASSES,
    "nms_score_threshold": 0.3, "nms_iou_threshold": 0.5,
    "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0,
}  # fmt: skip


def ssd_anchors() -> np.ndarray:
    """(ycenter, xcenter, h, w): a 4x4 grid, two anchors a cell."""
    rows = []
    for y in range(4):
        for x in range(4):
            rows += [
                ((y + 0.5) / 4, (x + 0.5) / 4, 0.3, 0.3),
                ((y + 0.5) / 4, (x + 0.5) / 4, 0.5, 0.25),
            ]
    return np.asarray(rows, np.float32)


def _implements() -> str:
    attrs = [
        f'attr {{ key: "{k}" value {{ {"f" if isinstance(v, float) else "i"}: {v} }} }}'
        for k, v in SSD_ATTRS.items()
    ]
    attrs.append('attr { key: "use_regular_nms" value { b: false } }')
    return " ".join(['name: "TFLite_Detection_PostProcess"', *attrs])


def ssd_postprocess(path: Path, workdir: Path) -> Path:
    """Keras box and class heads, sigmoid, then the post-process op (float)."""
    import tensorflow as tf

    keras = _keras()
    inp, x = _trunk(15)
    small = keras.initializers.RandomNormal(stddev=0.05)
    enc = keras.layers.Reshape((SSD_ANCHORS, 4))(
        keras.layers.Dense(SSD_ANCHORS * 4, kernel_initializer=small)(x)
    )
    logits = keras.layers.Reshape((SSD_ANCHORS, CLASSES))(
        keras.layers.Dense(SSD_ANCHORS * CLASSES)(x)
    )
    heads = keras.Model(inp, [enc, logits])
    m = int(SSD_ATTRS["max_detections"])

    @tf.function(experimental_implements=_implements())
    def postprocess(box_encodings: Any, class_scores: Any, anchors: Any) -> Any:
        del box_encodings, class_scores, anchors  # the converter puts the op in its place
        return (tf.zeros([1, m, 4]), tf.zeros([1, m]), tf.zeros([1, m]), tf.zeros([1]))

    anchors = tf.constant(ssd_anchors())

    def serve(images: Any) -> dict[str, Any]:
        e, c = heads(images, training=False)
        b, k, s, n = postprocess(e, tf.sigmoid(c), anchors)
        keys = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
        return dict(zip(keys, (b, k, s, n), strict=True))

    archive = keras.export.ExportArchive()
    archive.track(heads)
    archive.add_endpoint(
        "serve", serve, input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)]
    )
    saved = workdir / "ssd_saved_model"
    archive.write_out(str(saved), verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.allow_custom_ops = True
    path.write_bytes(bytes(conv.convert()))
    return path


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def keypoint_count() -> int:
    return RAW_KEYPOINTS


__all__ = ["ANCHOR_GENERATOR", "CLASSES", "SIZE", "math"]
