"""The standard TFLite SSD post-processing op: export a Keras SSD detector with it, convert it,
find its outputs, run the converted model, and decode raw outputs the way the op does.

The SavedModel's serving function runs the Keras model, applies the sigmoid, and calls an empty
`tf.function` whose `experimental_implements` attribute is a NameAttrList text proto naming
`TFLite_Detection_PostProcess` with the op's attributes. The TFLite converter (MLIR, "prepare
composite functions") replaces that function by the custom op, which needs `allow_custom_ops`.
The stub's three arguments (box encodings, class scores, anchors) and four results (boxes,
classes, scores, count) are the op's inputs and outputs, in that order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle.manifest import OutputRole
from agent.decoders.base import sigmoid
from agent.geometry.anchors import generate_anchors
from agent.geometry.boxes import decode, nms
from agent.runtime import LoadedModel, TensorInfo, open_model
from converter.evaluation import Detections
from converter.tasks.detector_config import DetectorConfig, NmsConfig
from converter.tasks.tensor import quantize_input

logger = logging.getLogger(__name__)

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
INPUT_NAME = "images"
# Signature output keys. The converted outputs are named "<call>:<k>", k being the position of the
# key in sorted order, which for these keys is also the op's output order.
OUTPUT_KEYS: tuple[str, ...] = (
    "detection_boxes",
    "detection_classes",
    "detection_scores",
    "num_detections",
)
ROLES: tuple[OutputRole, ...] = (
    OutputRole.BOXES,
    OutputRole.CLASSES,
    OutputRole.SCORES,
    OutputRole.COUNT,
)


class ExportError(RuntimeError):
    """The converted detector does not have the expected post-processing outputs."""


def implements_signature(cfg: DetectorConfig) -> str:
    """The `experimental_implements` string: a NameAttrList text proto with the op attributes."""
    nms, coder = cfg.nms, cfg.nms.coder
    attrs: list[tuple[str, str]] = [
        ("max_detections", f"i: {int(nms.max_detections)}"),
        ("max_classes_per_detection", f"i: {int(nms.max_classes_per_detection)}"),
        ("num_classes", f"i: {cfg.num_classes}"),
        ("nms_score_threshold", f"f: {float(nms.nms_score_threshold)!r}"),
        ("nms_iou_threshold", f"f: {float(nms.nms_iou_threshold)!r}"),
        ("y_scale", f"f: {float(coder.y_scale)!r}"),
        ("x_scale", f"f: {float(coder.x_scale)!r}"),
        ("h_scale", f"f: {float(coder.h_scale)!r}"),
        ("w_scale", f"f: {float(coder.w_scale)!r}"),
        ("use_regular_nms", f"b: {'true' if nms.use_regular_nms else 'false'}"),
    ]
    parts = [f'name: "{POSTPROCESS_OP}"'] + [
        f'attr {{ key: "{k}" value {{ {v} }} }}' for k, v in attrs
    ]
    return " ".join(parts)


def _postprocess_stub(cfg: DetectorConfig) -> Callable[..., Any]:
    import tensorflow as tf

    m = cfg.nms.max_detections

    @tf.function(experimental_implements=implements_signature(cfg))
    def postprocess(
        box_encodings: Any, class_scores: Any, anchors: Any
    ) -> tuple[Any, Any, Any, Any]:
        # Only the signature matters: the converter replaces the body by the custom op.
        del box_encodings, class_scores, anchors
        return (
            tf.zeros([1, m, 4], tf.float32, name="boxes"),
            tf.zeros([1, m], tf.float32, name="classes"),
            tf.zeros([1, m], tf.float32, name="scores"),
            tf.zeros([1], tf.float32, name="count"),
        )

    return postprocess


def export_saved_model(model: Any, cfg: DetectorConfig, out_dir: Path) -> Path:
    """Write a SavedModel whose serving signature ends in the SSD post-processing stub."""
    import keras
    import tensorflow as tf

    anchors = tf.constant(generate_anchors(cfg.anchors), name="anchors")
    postprocess = _postprocess_stub(cfg)

    def serve(images: Any) -> dict[str, Any]:
        box_encodings, class_logits = model(images, training=False)
        outputs = postprocess(box_encodings, tf.sigmoid(class_logits), anchors)
        return dict(zip(OUTPUT_KEYS, outputs, strict=True))

    archive = keras.export.ExportArchive()
    archive.track(model)
    size = cfg.input_size
    spec = tf.TensorSpec([1, size, size, 3], tf.float32, name=INPUT_NAME)
    archive.add_endpoint("serve", serve, input_signature=[spec])
    archive.write_out(str(out_dir), verbose=False)
    return Path(out_dir)


def configure_converter(converter: Any) -> None:
    """The post-processing op is a custom op, and its outputs stay float32."""
    import tensorflow as tf

    converter.allow_custom_ops = True
    converter.inference_output_type = tf.float32


def convert(
    saved_model_dir: Path,
    representative: Iterable[np.ndarray] | None = None,
    input_type: str = "int8",
) -> bytes:
    """Convert a SavedModel to TFLite: float without data, full-integer int8 with it.

    The stand-alone path for tests and benchmarks; `edgegap convert` does the same through the
    task adapter with the profile's settings.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if representative is not None:
        samples = [np.asarray(x, np.float32) for x in representative]

        def dataset() -> Iterable[list[np.ndarray]]:
            for x in samples:
                yield [x[np.newaxis] if x.ndim == 3 else x]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = {
            "int8": tf.int8,
            "uint8": tf.uint8,
            "float32": tf.float32,
        }[input_type]
    configure_converter(converter)
    return bytes(converter.convert())


_SUFFIX = re.compile(r":(\d+)$")


def _role_by_name(name: str) -> OutputRole | None:
    """A signature key (detection_boxes, ...) or a tensor name "<call>:k" (k = sorted key position)."""
    if name in OUTPUT_KEYS:
        return ROLES[OUTPUT_KEYS.index(name)]
    m = _SUFFIX.search(name)
    k = int(m.group(1)) if m else -1
    return ROLES[k] if 0 <= k < len(ROLES) else None


def output_roles(outputs: Sequence[TensorInfo]) -> list[OutputRole]:
    """Role of each converted output from its name, checked against the shape the role must have."""
    if len(outputs) != len(ROLES):
        raise ExportError(
            f"expected {len(ROLES)} post-processing outputs, the model has {len(outputs)}"
        )
    roles = []
    for out in outputs:
        role = _role_by_name(out.name)
        if role is None:
            raise ExportError(f"output {out.name!r} is not named like a post-processing output")
        roles.append(role)
    if sorted(r.value for r in roles) != sorted(r.value for r in ROLES):
        raise ExportError(f"output names {[o.name for o in outputs]} do not give each role once")
    for out, role in zip(outputs, roles, strict=True):
        ok = {
            OutputRole.BOXES: len(out.shape) == 3 and out.shape[-1] == 4,
            OutputRole.CLASSES: len(out.shape) == 2,
            OutputRole.SCORES: len(out.shape) == 2,
            OutputRole.COUNT: len(out.shape) == 1,
        }[role]
        if not ok:
            raise ExportError(
                f"output {out.name!r} has shape {list(out.shape)}, not a {role.value} shape"
            )
    return roles


def roles_from_op(model_bytes: bytes) -> dict[OutputRole, int]:
    """Tensor index of each role, read from the post-processing op's own output list in the
    flatbuffer (tensor indices of the first subgraph are the interpreter's)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    for j in range(graph.OperatorsLength()):
        op = graph.Operators(j)
        if (codes[op.OpcodeIndex()].CustomCode() or b"").decode() == POSTPROCESS_OP:
            return {role: int(i) for role, i in zip(ROLES, op.OutputsAsNumpy(), strict=True)}
    raise ExportError(f"the model has no {POSTPROCESS_OP} op")


# --- running the converted model, and the op's twin for raw outputs ---------------------------


def read_postprocessed(model: LoadedModel, roles: Mapping[OutputRole, int]) -> Detections:
    """The valid detections of the last invoke, each output found by its tensor index."""
    n = int(round(float(model.get(roles[OutputRole.COUNT]).ravel()[0])))
    boxes = model.get(roles[OutputRole.BOXES]).reshape(-1, 4)[:n].astype(np.float32)
    classes = np.rint(model.get(roles[OutputRole.CLASSES]).reshape(-1)[:n]).astype(np.int32)
    scores = model.get(roles[OutputRole.SCORES]).reshape(-1)[:n].astype(np.float32)
    return Detections(boxes, scores, classes)


def run_postprocessed(
    model: LoadedModel, x: np.ndarray, roles: Mapping[OutputRole, int]
) -> list[Detections]:
    """Detections for each normalized input in x (N, H, W, C)."""
    info = model.inputs[0]
    out = []
    for item in x:
        model.set_input(quantize_input(item[np.newaxis], info))
        model.invoke()
        out.append(read_postprocessed(model, roles))
    return out


def run_tflite_detector(model_bytes: bytes, x: np.ndarray, threads: int = 2) -> list[Detections]:
    """Detections of a converted detector (no manifest) on normalized inputs, with the output
    roles read from the post-processing op itself; for tests and benchmarks."""
    return run_postprocessed(open_model(model_bytes, threads), x, roles_from_op(model_bytes))


def postprocess(
    box_enc: np.ndarray, scores: np.ndarray, anchors: np.ndarray, cfg: NmsConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The fast-NMS path of TFLite_Detection_PostProcess for one image, in NumPy.

    box_enc (A, 4) encodings, scores (A, C) class scores (already through the sigmoid).
    Returns boxes (M, 4) yxyx, classes (M,), scores (M,) and the count, padded to max_detections.
    """
    boxes = decode(box_enc, anchors, cfg.coder)
    best = scores.max(axis=1)
    label = scores.argmax(axis=1)
    keep = np.nonzero(best >= cfg.nms_score_threshold)[0]
    selected = keep[nms(boxes[keep], best[keep], cfg.nms_iou_threshold, cfg.max_detections)]
    m = cfg.max_detections
    out_b = np.zeros((m, 4), np.float32)
    out_c = np.zeros(m, np.float32)
    out_s = np.zeros(m, np.float32)
    k = len(selected)
    out_b[:k] = boxes[selected]
    out_c[:k] = label[selected]
    out_s[:k] = best[selected]
    return out_b, out_c, out_s, k


def detections_from_raw(
    box: np.ndarray, logits: np.ndarray, cfg: DetectorConfig
) -> list[Detections]:
    """Per image detections from raw outputs (N, A, 4) and (N, A, C), through the NumPy twin
    of the TFLite post-process, with the sidecar's NMS settings."""
    anchors = generate_anchors(cfg.anchors)
    out = []
    for b, lg in zip(box, logits, strict=True):
        boxes, classes, scores, n = postprocess(b, sigmoid(lg), anchors, cfg.nms)
        out.append(Detections(boxes[:n], scores[:n], classes[:n].astype(np.int32)))
    return out
