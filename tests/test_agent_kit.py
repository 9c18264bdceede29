"""Test kit for the agent: tiny real models converted with tf.lite, bundles, and generated videos.

The "grid detector" is a hand-weighted Keras model whose answer is known: it splits a 64x64
input into an 8x8 grid of cells, and a cell's score for class red (green) is the mean red
(green) level of its pixels. A video with pure red and green squares on black, aligned to cells,
therefore has exact ground truth. The model is exported in every layout the agent decodes.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.bundle.golden import record_golden
from agent.bundle.loading import Bundle, write_bundle
from agent.bundle.manifest import Decoder, InputSpec, Manifest, ModelFile, OutputRole, OutputSpec
from agent.runtime import open_model

GRID = 8
SIZE = 64
CELL = SIZE // GRID
LABELS = ["red", "green"]
COLORS_BGR = {"red": (0, 0, 255), "green": (0, 255, 0)}

# Source frames are 320x240: a cell of the (stretched) model input is 40x30 source pixels.
SRC_W, SRC_H = 320, 240


def cell_anchors() -> np.ndarray:
    """[A, 4] anchors (ycenter, xcenter, h, w), normalized, one per grid cell in row-major order."""
    ys, xs = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    cy = (ys.ravel() + 0.5) / GRID
    cx = (xs.ravel() + 0.5) / GRID
    hw = np.full(GRID * GRID, 1.0 / GRID)
    return np.stack([cy, cx, hw, hw], axis=1).astype(np.float32)


def _calibration() -> Iterator[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    for i in range(24):
        img = np.zeros((SIZE, SIZE, 3), np.float32)
        for _ in range(3):
            r, c = rng.integers(0, GRID, 2)
            img[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL, int(rng.integers(0, 2))] = 1.0
        if i % 4 == 0:
            img = rng.random((SIZE, SIZE, 3), dtype=np.float32)
        yield [img[np.newaxis]]


def _cell_scores(tf: Any, keras: Any, x: Any) -> Any:
    """[1, 64, 2]: per cell mean of the R and G channels (input is RGB in [0, 1])."""
    pooled = keras.layers.AveragePooling2D(CELL)(x)
    pick = keras.layers.Conv2D(2, 1, use_bias=False, name="pick_rg")
    scores = pick(pooled)
    pick.set_weights([np.array([[[[1, 0], [0, 1], [0, 0]]]], np.float32)])
    return keras.layers.Reshape((GRID * GRID, 2))(scores)


class _Const:
    """Builds a Keras layer that adds a fixed tensor (broadcast over the batch)."""

    @staticmethod
    def layer(keras: Any, value: np.ndarray, name: str) -> Any:
        class AddConst(keras.layers.Layer):
            def build(self, input_shape: Any) -> None:
                self.value = self.add_weight(
                    shape=value.shape,
                    initializer=keras.initializers.Constant(value),
                    trainable=False,
                )

            def call(self, t: Any) -> Any:
                return keras.ops.zeros_like(t[..., :1]) + self.value

        return AddConst(name=name)


def _convert(saved_dir: Path, int8_output: bool, custom_ops: bool = False) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_dir))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _calibration
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8 if int8_output else tf.float32
    if custom_ops:
        conv.allow_custom_ops = True
    return bytes(conv.convert())


def _export(fn: Callable[..., Any], model: Any, out: Path) -> None:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve", fn=fn, input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)]
    )
    archive.write_out(str(out), verbose=False)


def _postprocess_stub(tf: Any, num_classes: int, max_det: int) -> Any:
    attrs = {
        "max_detections": f"i: {max_det}",
        "max_classes_per_detection": "i: 1",
        "detections_per_class": "i: 100",
        "use_regular_nms": "b: false",
        "nms_score_threshold": "f: 0.3",
        "nms_iou_threshold": "f: 0.5",
        "y_scale": "f: 10.0",
        "x_scale": "f: 10.0",
        "h_scale": "f: 5.0",
        "w_scale": "f: 5.0",
        "num_classes": f"i: {num_classes}",
    }
    implements = 'name: "TFLite_Detection_PostProcess"' + "".join(
        f' attr {{ key: "{k}" value {{ {v} }} }}' for k, v in attrs.items()
    )

    @tf.function(experimental_implements=implements)
    def postprocess(box_encodings: Any, class_predictions: Any, anchors: Any) -> Any:
        boxes = tf.constant(0.0, dtype=tf.float32, name="boxes")
        classes = tf.constant(0.0, dtype=tf.float32, name="classes")
        scores = tf.constant(0.0, dtype=tf.float32, name="scores")
        count = tf.constant(0.0, dtype=tf.float32, name="num_detections")
        return boxes, classes, scores, count

    return postprocess


def _ssd_heads(keras: Any) -> Any:
    """Keras model: image -> (box encodings [1, A, 4] all zero, class scores with background [1, A, 3])."""
    inp = keras.Input((SIZE, SIZE, 3), batch_size=1)
    scores = _cell_scores(None, keras, inp)
    background = keras.layers.Lambda(lambda s: 1.0 - keras.ops.max(s, axis=-1, keepdims=True))(
        scores
    )
    with_bg = keras.layers.Concatenate(axis=-1)([background, scores])
    enc = _Const.layer(keras, np.zeros((1, GRID * GRID, 4), np.float32), "zero_encodings")(scores)
    return keras.Model(inp, [enc, with_bg])


def build_model(layout: str, workdir: Path) -> bytes:
    """Convert the grid detector in one layout: ssd_postprocess, ssd_raw, yolo or classification."""
    import keras
    import tensorflow as tf

    saved = workdir / f"saved_{layout}"
    if layout == "yolo":
        inp = keras.Input((SIZE, SIZE, 3), batch_size=1)
        scores = _cell_scores(tf, keras, inp)
        a = cell_anchors()
        boxes = np.stack([a[:, 1], a[:, 0], a[:, 3], a[:, 2]], axis=1)[np.newaxis]  # cx, cy, w, h
        const = _Const.layer(keras, boxes.astype(np.float32), "cell_boxes")(scores)
        model = keras.Model(inp, keras.layers.Concatenate(axis=-1)([const, scores]))
        _export(lambda x: model(x), model, saved)
        return _convert(saved, int8_output=True)
    if layout == "classification":
        inp = keras.Input((SIZE, SIZE, 3), batch_size=1)
        pooled = keras.layers.GlobalAveragePooling2D()(inp)
        dense = keras.layers.Dense(2, name="logits")
        logits = dense(pooled)
        dense.set_weights(
            [np.array([[20, -20], [-20, 20], [0, 0]], np.float32), np.zeros(2, np.float32)]
        )
        model = keras.Model(inp, keras.layers.Softmax()(logits))
        _export(lambda x: model(x), model, saved)
        return _convert(saved, int8_output=True)
    heads = _ssd_heads(keras)
    if layout == "ssd_raw":
        _export(lambda x: heads(x), heads, saved)
        return _convert(saved, int8_output=True)
    if layout == "ssd_postprocess":
        post = _postprocess_stub(tf, num_classes=2, max_det=10)
        anchors = tf.constant(cell_anchors())

        def serve(x: Any) -> Any:
            enc, cls = heads(x)
            return post(enc, cls, anchors)

        _export(serve, heads, saved)
        return _convert(saved, int8_output=False, custom_ops=True)
    raise ValueError(layout)


def _roles(layout: str, details: list[Any]) -> list[OutputRole]:
    if layout == "yolo":
        return [OutputRole.YOLO]
    if layout == "classification":
        return [OutputRole.PROBABILITIES]
    if layout == "ssd_raw":
        return [
            OutputRole.RAW_BOXES if d.shape[-1] == 4 else OutputRole.RAW_SCORES for d in details
        ]
    # The post-process op's four outputs, matched by name suffix then by shape.
    roles = []
    for d in details:
        if len(d.shape) == 3:
            roles.append(OutputRole.BOXES)
        elif len(d.shape) == 1:
            roles.append(OutputRole.COUNT)
        else:
            roles.append(None)
    pending = [i for i, r in enumerate(roles) if r is None]
    # TFLite_Detection_PostProcess emits boxes, classes, scores, count as tensors :0..:3.
    by_suffix = sorted(pending, key=lambda i: details[i].name.rsplit(":", 1)[-1])
    roles[by_suffix[0]] = OutputRole.CLASSES
    roles[by_suffix[1]] = OutputRole.SCORES
    return roles  # type: ignore[return-value]


DECODERS = {
    "ssd_postprocess": Decoder.SSD_POSTPROCESS,
    "ssd_raw": Decoder.SSD_RAW,
    "yolo": Decoder.YOLO,
    "classification": Decoder.CLASSIFICATION,
}


def make_bundle(layout: str, out_dir: Path, version: int = 1, golden: bool = True) -> Bundle:
    """Build, convert and write a grid-detector bundle in the given layout."""
    with tempfile.TemporaryDirectory() as tmp:
        content = build_model(layout, Path(tmp))
    loaded = open_model(content)
    inp = loaded.inputs[0]
    extra: dict[str, Any] = {}
    if layout == "ssd_raw":
        extra = {
            "anchors": cell_anchors().round(6).tolist(),
            "box_scales": [10.0, 10.0, 5.0, 5.0],
            "background_class": True,
            "score_activation": "none",
            "iou_threshold": 0.5,
        }
    if layout == "yolo":
        extra = {"box_format": "cxcywh", "box_units": "normalized", "iou_threshold": 0.5}
    roles = _roles(layout, loaded.outputs)
    manifest = Manifest(
        name=f"grid-{layout.replace('_', '-')}",
        version=version,
        profile="x86-avx2",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        task="classification" if layout == "classification" else "detection",
        decoder=DECODERS[layout],
        model=ModelFile(sha256=hashlib.sha256(content).hexdigest(), size=len(content)),
        input=InputSpec(
            name=inp.name,
            shape=list(inp.shape),
            dtype=inp.dtype.name,
            scale=inp.scale,
            zero_point=inp.zero_point,
            mean=[0.0],
            std=[255.0],
        ),
        outputs=[
            OutputSpec(
                name=o.name,
                index=o.index,
                role=r,
                shape=list(o.shape),
                dtype=o.dtype.name,
                scale=o.scale,
                zero_point=o.zero_point,
            )
            for o, r in zip(loaded.outputs, roles, strict=True)
        ],
        labels=LABELS,
        extra=extra,
    )
    if golden:
        manifest = manifest.model_copy(update={"golden": record_golden(loaded, manifest)})
    return write_bundle(out_dir, content, manifest)


@cache
def cached_bundle(layout: str) -> Bundle:
    """One bundle per layout per test session (conversion takes seconds)."""
    root = Path(tempfile.mkdtemp(prefix="edgegap-agent-kit-"))
    atexit.register(shutil.rmtree, root, True)
    return make_bundle(layout, root / layout)


def scene(index: int) -> list[tuple[str, int, int]]:
    """Objects in frame `index`: (label, grid row, grid col); they move one cell per frame."""
    return [("red", 1 + index % 3, index % GRID), ("green", 5, (GRID - 1 - index) % GRID)]


def cell_box(row: int, col: int) -> tuple[float, float, float, float]:
    """The source-pixel box (xmin, ymin, xmax, ymax) covered by one grid cell."""
    cw, ch = SRC_W / GRID, SRC_H / GRID
    return (col * cw, row * ch, (col + 1) * cw, (row + 1) * ch)


def render_frame(index: int) -> np.ndarray:
    img = np.zeros((SRC_H, SRC_W, 3), np.uint8)
    for label, row, col in scene(index):
        x0, y0, x1, y1 = (int(round(v)) for v in cell_box(row, col))
        img[y0:y1, x0:x1] = COLORS_BGR[label]
    cv2.putText(img, str(index), (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (40, 40, 40), 1)
    return img


def write_video(path: Path, frames: int, fps: float = 30.0) -> Path:
    """An MJPG .avi of the moving squares (OpenCV's headless build writes it without extras)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (SRC_W, SRC_H))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for i in range(frames):
        writer.write(render_frame(i))
    writer.release()
    return path


def write_images(directory: Path, frames: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        cv2.imwrite(str(directory / f"frame{i:04d}.png"), render_frame(i))
    return directory


def test_grid_yolo_model_scores_cells(tmp_path: Path) -> None:
    """The kit's own anchor: the converted grid detector scores the cells that hold the squares."""
    bundle = cached_bundle("yolo")
    model = open_model(bundle.model_bytes())
    frame = cv2.resize(render_frame(2), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    spec = model.inputs[0]
    x = np.clip(np.rint(frame[..., ::-1] / 255.0 / spec.scale + spec.zero_point), -128, 127)
    out = model.run(x.astype(np.int8)[np.newaxis])[0]
    o = model.outputs[0]
    y = (out.astype(np.float32) - o.zero_point) * o.scale
    cls = y[0, :, 4:]
    for label, row, col in scene(2):
        k = LABELS.index(label)
        assert cls[row * GRID + col, k] > 0.9
    assert (cls > 0.5).sum() == 2


def test_write_input_fills_the_interpreter_buffer_in_place() -> None:
    """write_input() gives the same answer as set_input(), and leaves invoke() free to run."""
    model = open_model(cached_bundle("yolo").model_bytes())
    rng = np.random.default_rng(3)
    for _ in range(2):
        x = rng.integers(-128, 128, model.inputs[0].shape, dtype=np.int8)
        want = model.run(x)[0]
        model.run(np.zeros_like(x))
        assert model.write_input(lambda buf, x=x: np.copyto(buf, x)) is None
        model.invoke()
        np.testing.assert_array_equal(model.get(model.outputs[0].index), want)


def detections_by_frame(path: Path) -> dict[int, list[Any]]:
    """A JSONL file of detections messages: frame index -> that frame's detections."""
    out = {}
    for line in path.read_text().splitlines():
        msg = json.loads(line)
        out[msg["frame"]["index"]] = msg["detections"]
    return out


class ManualClock:
    """Time that moves only when the test moves it: pacing tested without the machine's speed."""

    def __init__(self) -> None:
        self.t = 0.0
        self._cond = threading.Condition()

    def now(self) -> float:
        return self.t

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        with self._cond:
            target = round(self.t + seconds, 9)  # to the nanosecond: 10 x 0.02 is 0.2
            while self.t < target and not stop.is_set():
                self._cond.wait(0.05)
        return stop.is_set()

    def advance(self, seconds: float) -> None:
        with self._cond:
            self.t = round(self.t + seconds, 9)
            self._cond.notify_all()
