"""Which decoder an existing .tflite model needs, read from its outputs: the layout `edgegap
import` chooses, or the reason it cannot tell.

Layouts, in the order they are tried:
  ssd_postprocess  the model ends in TFLite_Detection_PostProcess: its four outputs, by the op's
                   own output list (never by position in get_output_details());
  ssd_raw          two [1, A, k] outputs sharing the anchor axis A, when anchors are given;
  yolo             one [1, N, 4 + C] output, or [1, 4 + C, N] (transposed, as Ultralytics exports);
  classification   one output holding a single row of class scores (after a softmax, or with
                   labels naming them: else it may be a regression head's values);
  tensor           anything else: the outputs are published as they are.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.bundle.manifest import Decoder, OutputRole
from agent.errors import EdgegapError
from agent.runtime import TensorInfo
from converter.graph import ModelGraph

logger = logging.getLogger(__name__)

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
TASKS = {
    Decoder.SSD_POSTPROCESS: "detection",
    Decoder.SSD_RAW: "detection",
    Decoder.YOLO: "detection",
    Decoder.CLASSIFICATION: "classification",
    Decoder.TENSOR: "tensor",
}
_BOX_NAME = re.compile(r"box|regress|loc|coord|bbox", re.I)
_SCORE_NAME = re.compile(r"score|class|conf|logit|prob", re.I)
_PASSIVE_OPS = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE"}


class LayoutError(EdgegapError, ValueError):
    """The outputs do not fit the decoder asked for, or their layout is ambiguous."""


@dataclass
class Layout:
    decoder: Decoder
    roles: list[OutputRole]  # one per model output, in the model's output order
    why: str  # one line for people: what was recognised
    extra: dict[str, Any] = field(default_factory=dict)  # decoder parameters it implies

    @property
    def task(self) -> str:
        return TASKS[self.decoder]


def choose_layout(
    outputs: Sequence[TensorInfo],
    graph: ModelGraph,
    postprocess_roles: dict[OutputRole, int] | None,
    decoder: Decoder | None,
    extra: dict[str, Any],
    labels: int,
    boxes_output: str | None = None,
) -> Layout:
    """The layout of the outputs: the one `decoder` names, checked, or the one recognised.

    postprocess_roles: the tensor index of each post-process output, when the op is in the model.
    extra: the decoder parameters given so far; labels: how many labels were given (0: none).
    boxes_output: ssd_raw: the name of the output holding the box encodings, when given.
    """
    if decoder is None:
        return _recognise(outputs, graph, postprocess_roles, extra, labels, boxes_output)
    if decoder is Decoder.SSD_POSTPROCESS:
        if postprocess_roles is None:
            raise LayoutError(f"--decoder ssd_postprocess: the model has no {POSTPROCESS_OP} op")
        return _postprocess(outputs, postprocess_roles)
    if decoder is Decoder.SSD_RAW:
        return _ssd_raw(outputs, extra, boxes_output)
    if decoder is Decoder.YOLO:
        return _yolo(outputs, extra, labels)
    if decoder is Decoder.CLASSIFICATION:
        layout = _classifier(outputs, graph, asked=True)
        assert layout is not None  # asked: an error instead of None
        return layout
    return Layout(Decoder.TENSOR, [OutputRole.TENSOR] * len(outputs), "--decoder tensor")


def _recognise(
    outputs: Sequence[TensorInfo],
    graph: ModelGraph,
    postprocess_roles: dict[OutputRole, int] | None,
    extra: dict[str, Any],
    labels: int,
    boxes_output: str | None,
) -> Layout:
    if postprocess_roles is not None:
        return _postprocess(outputs, postprocess_roles)
    shapes = [list(o.shape) for o in outputs]
    if len(outputs) == 2 and all(len(s) == 3 for s in shapes) and shapes[0][1] == shapes[1][1]:
        if not any(k in extra for k in ("anchor_data", "anchor_generator", "anchors")):
            raise LayoutError(
                f"cannot tell the layout: outputs {shapes[0]} and {shapes[1]} share an axis of "
                f"{shapes[0][1]} like a raw-anchor detector's; give --decoder ssd_raw with "
                "--anchors FILE.npy or --anchor-generator FILE, or --decoder tensor"
            )
        return _ssd_raw(outputs, extra, boxes_output)
    if len(outputs) == 1 and len(shapes[0]) == 3 and shapes[0][0] == 1:
        n, k = shapes[0][1], shapes[0][2]
        if min(n, k) >= 5:
            return _yolo(outputs, extra, labels)
    classifier = _classifier(outputs, graph, asked=False)
    if classifier is not None and classifier.roles == [OutputRole.LOGITS] and labels <= 0:
        shape, n = shapes[0], shapes[0][-1]
        raise LayoutError(
            f"cannot tell the layout: output {shape} is one row of {n} values with no softmax "
            f"after it: class logits or regression values; give --decoder classification (or "
            f"--labels naming {n} classes), or --decoder tensor"
        )
    if classifier is not None:
        return classifier
    listed = ", ".join(str(s) for s in shapes)
    return Layout(
        Decoder.TENSOR,
        [OutputRole.TENSOR] * len(outputs),
        f"no detector or classifier layout in outputs {listed}: published as tensors",
    )


def _postprocess(outputs: Sequence[TensorInfo], by_role: dict[OutputRole, int]) -> Layout:
    role_of = {index: role for role, index in by_role.items()}
    missing = [r.value for r, i in by_role.items() if i not in {o.index for o in outputs}]
    if missing:
        raise LayoutError(
            f"{POSTPROCESS_OP}'s outputs {', '.join(missing)} are not outputs of the model"
        )
    roles = [role_of.get(o.index, OutputRole.TENSOR) for o in outputs]
    order = ", ".join(role_of[o.index].value for o in outputs if o.index in role_of)
    return Layout(
        Decoder.SSD_POSTPROCESS,
        roles,
        f"the four {POSTPROCESS_OP} outputs (model order: {order})",
    )


def _ssd_raw(
    outputs: Sequence[TensorInfo], extra: dict[str, Any], boxes_output: str | None
) -> Layout:
    shapes = [list(o.shape) for o in outputs]
    if len(outputs) != 2 or any(len(s) != 3 for s in shapes) or shapes[0][1] != shapes[1][1]:
        raise LayoutError(
            f"ssd_raw needs two [1, anchors, k] outputs sharing the anchor axis; the model has "
            f"{', '.join(str(s) for s in shapes)}"
        )
    boxes = _boxes_output(outputs, int(extra.get("extra_values", 0)), boxes_output)
    roles = [OutputRole.RAW_BOXES if i == boxes else OutputRole.RAW_SCORES for i in range(2)]
    b, s = shapes[boxes], shapes[1 - boxes]
    more = f", {b[2] - 4} extra values" if b[2] > 4 else ""
    coding = extra.get("box_coding", "yxhw")
    return Layout(
        Decoder.SSD_RAW, roles, f"raw-anchor detector: boxes {b} ({coding}{more}), scores {s}"
    )


def _boxes_output(
    outputs: Sequence[TensorInfo], extra_values: int, asked: str | None = None
) -> int:
    """Which of two outputs holds the boxes: the one asked for, else by name, else the one
    4 + extra_values wide."""
    if asked is not None:
        found = [i for i, o in enumerate(outputs) if o.name == asked]
        if len(found) != 1:
            names = ", ".join(repr(o.name) for o in outputs)
            raise LayoutError(f"--boxes-output {asked!r}: the model's outputs are {names}")
        return found[0]
    named = [i for i, o in enumerate(outputs) if _BOX_NAME.search(o.name)]
    scored = [i for i, o in enumerate(outputs) if _SCORE_NAME.search(o.name)]
    if len(named) == 1 and named != scored:
        return named[0]
    if len(scored) == 1 and named != scored:
        return 1 - scored[0]
    wide = [i for i, o in enumerate(outputs) if o.shape[-1] == 4 + extra_values]
    if len(wide) == 1:
        return wide[0]
    if not wide and sum(o.shape[-1] >= 4 for o in outputs) == 1:
        # the only one that can hold a box; the decoder's check says what extra_values it needs
        return next(i for i, o in enumerate(outputs) if o.shape[-1] >= 4)
    shapes = " and ".join(str(list(o.shape)) for o in outputs)
    raise LayoutError(
        f"cannot tell which of {shapes} holds the boxes: "
        + (
            f"neither has {4 + extra_values} values per anchor; give --extra-values N "
            "for the values after the 4 box values (keypoints)"
            if not wide
            else "both have the same width and their names do not say; give --boxes-output NAME "
            f"(one of {', '.join(repr(o.name) for o in outputs)})"
        )
    )


def _yolo(outputs: Sequence[TensorInfo], extra: dict[str, Any], labels: int) -> Layout:
    shape = list(outputs[0].shape)
    if len(outputs) != 1 or len(shape) != 3:
        raise LayoutError(f"yolo needs one [1, N, 4 + C] output; the model has {len(outputs)}")
    n, k = shape[1], shape[2]
    first = 5 if extra.get("objectness") else 4
    if "transposed" in extra:
        transposed = bool(extra["transposed"])
    elif labels and (n == first + labels) != (k == first + labels):
        transposed = n == first + labels
    elif n == k:
        raise LayoutError(
            f"cannot tell the layout: output {shape} is square, so [1, N, 4 + C] and its "
            "transpose look alike; give --decoder yolo with --transposed or --no-transposed, "
            "or --decoder tensor"
        )
    else:
        transposed = n < k  # boxes outnumber the values per box
    rows, width = (k, n) if transposed else (n, k)
    how = "[1, 4 + C, N] transposed" if transposed else "[1, N, 4 + C]"
    return Layout(
        Decoder.YOLO,
        [OutputRole.YOLO],
        f"YOLO-style {how}: {rows} boxes of {width - first} classes",
        {"transposed": transposed},
    )


def _classifier(outputs: Sequence[TensorInfo], graph: ModelGraph, asked: bool) -> Layout | None:
    """One row of class scores ([1, C] or [1, 1, 1, C]); None (or an error if asked) otherwise."""
    shape = list(outputs[0].shape)
    if len(outputs) == 1 and shape and shape[-1] >= 2 and math.prod(shape) == shape[-1]:
        active = [op for op in graph.ops if op not in _PASSIVE_OPS]
        softmax = bool(active) and active[-1] == "SOFTMAX"
        role = OutputRole.PROBABILITIES if softmax else OutputRole.LOGITS
        return Layout(
            Decoder.CLASSIFICATION,
            [role],
            f"classifier: {shape[-1]} classes ({'softmax' if softmax else 'logits, softmaxed on the device'})",
        )
    if asked:
        raise LayoutError(
            f"classification needs one output with one row of class scores; the model has "
            f"{', '.join(str(list(o.shape)) for o in outputs)}"
        )
    return None
