"""How `edgegap import` reads a model's outputs: the layout it recognises, or why it cannot."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.bundle.manifest import Decoder, OutputRole
from agent.runtime import TensorInfo
from converter.graph import ModelGraph
from converter.layouts import Layout, LayoutError, choose_layout

R = OutputRole


def outs(*shapes: list[int], names: tuple[str, ...] = ()) -> list[TensorInfo]:
    return [
        TensorInfo(
            names[i] if names else f"output_{i}", 10 + i, tuple(s), np.dtype("float32"), 0.0, 0
        )
        for i, s in enumerate(shapes)
    ]


def graph(*ops: str) -> ModelGraph:
    return ModelGraph(ops=list(ops), custom_ops=set(), arena_estimate=0, subgraphs=1)


def layout(outputs: list[TensorInfo], decoder: Decoder | None = None, labels: int = 0,
           ops: tuple[str, ...] = ("CONV_2D",), **extra: Any) -> Layout:  # fmt: skip
    return choose_layout(outputs, graph(*ops), None, decoder, dict(extra), labels)


def test_yolo_rows_or_transposed_from_the_shape_or_the_labels() -> None:
    plain = layout(outs([1, 8400, 84]))
    assert plain.decoder is Decoder.YOLO and plain.extra == {"transposed": False}
    assert "8400 boxes of 80 classes" in plain.why
    ultralytics = layout(outs([1, 84, 8400]))
    assert ultralytics.extra == {"transposed": True} and "transposed" in ultralytics.why
    # 7 values a box and 20 boxes: with 3 labels only the transposed reading fits
    assert layout(outs([1, 7, 20]), labels=3).extra == {"transposed": True}
    assert layout(outs([1, 20, 7]), labels=3).extra == {"transposed": False}
    with pytest.raises(LayoutError, match=r"output \[1, 10, 10\] is square"):
        layout(outs([1, 10, 10]))
    assert layout(outs([1, 10, 10]), Decoder.YOLO, transposed=True).extra == {"transposed": True}


def test_classifier_probabilities_after_softmax_else_logits() -> None:
    assert layout(outs([1, 1000]), ops=("CONV_2D", "SOFTMAX", "QUANTIZE")).roles == [
        R.PROBABILITIES
    ]
    assert layout(outs([1, 1, 1, 5]), labels=5).roles == [R.LOGITS]
    assert layout(outs([1, 5]), Decoder.CLASSIFICATION).roles == [R.LOGITS]
    # one row of values and no softmax: class logits, or a regression head's values
    with pytest.raises(LayoutError, match=r"cannot tell the layout: output \[1, 136\] is one row "
                       r"of 136 values with no softmax after it: class logits or regression "
                       r"values; give --decoder classification \(or --labels naming 136 "
                       r"classes\), or --decoder tensor"):  # fmt: skip
        layout(outs([1, 136]))
    with pytest.raises(LayoutError, match="one row of class scores"):
        layout(outs([1, 4], [1, 2]), Decoder.CLASSIFICATION)


def test_raw_anchor_pairs_need_anchors_and_a_box_width() -> None:
    mediapipe = outs([1, 896, 16], [1, 896, 1])
    with pytest.raises(LayoutError, match="share an axis of 896 like a raw-anchor detector's"):
        layout(mediapipe)
    got = layout(mediapipe, anchor_generator={}, extra_values=12)
    assert got.decoder is Decoder.SSD_RAW and got.roles == [R.RAW_BOXES, R.RAW_SCORES]
    # TF OD API: [1, A, 4] encodings beside [1, A, 91] scores; named outputs win over widths
    tfod = outs([1, 1917, 91], [1, 1917, 4])
    assert layout(tfod, Decoder.SSD_RAW).roles == [R.RAW_SCORES, R.RAW_BOXES]
    named = outs([1, 50, 4], [1, 50, 4], names=("class_predictions", "box_encodings"))
    assert layout(named, Decoder.SSD_RAW).roles == [R.RAW_SCORES, R.RAW_BOXES]
    same = outs([1, 50, 4], [1, 50, 4])  # 3 classes and a background: as wide as the boxes
    with pytest.raises(LayoutError, match="both have the same width.*give --boxes-output NAME"):
        layout(same, Decoder.SSD_RAW)


def test_boxes_output_names_the_box_encodings() -> None:
    same = outs([1, 50, 4], [1, 50, 4])
    for name, roles in (("output_1", [R.RAW_SCORES, R.RAW_BOXES]),
                        ("output_0", [R.RAW_BOXES, R.RAW_SCORES])):  # fmt: skip
        got = choose_layout(same, graph(), None, Decoder.SSD_RAW, {}, 0, boxes_output=name)
        assert got.roles == roles and got.extra == {}
    # over the names, too: the model's own names may mislead
    named = outs([1, 50, 4], [1, 50, 4], names=("class_predictions", "box_encodings"))
    got = choose_layout(
        named, graph(), None, Decoder.SSD_RAW, {}, 0, boxes_output="class_predictions"
    )
    assert got.roles == [R.RAW_BOXES, R.RAW_SCORES]
    with pytest.raises(LayoutError, match="--boxes-output 'boxes': the model's outputs are "
                       "'output_0', 'output_1'"):  # fmt: skip
        choose_layout(same, graph(), None, Decoder.SSD_RAW, {}, 0, boxes_output="boxes")


def test_anything_else_is_published_as_tensors() -> None:
    got = layout(outs([1, 468, 3], [1, 1], [1, 1]))
    assert got.decoder is Decoder.TENSOR and got.roles == [R.TENSOR] * 3
    assert "published as tensors" in got.why
    with pytest.raises(LayoutError, match="has no TFLite_Detection_PostProcess op"):
        layout(outs([1, 4]), Decoder.SSD_POSTPROCESS)
