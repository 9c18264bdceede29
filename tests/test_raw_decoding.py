"""ssd_raw's box codings and anchors, and the tensor decoder's limits, on known numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.bundle.manifest import Decoder, InputSpec, Manifest, ModelFile, OutputRole, OutputSpec
from agent.decoders import DecoderError, SSDRawDecoder, TensorDecoder, make_decoder
from agent.decoders.raw_boxes import anchor_data
from agent.geometry.anchors import ssd_anchors
from agent.geometry.boxes import BoxCoder, encode

R = OutputRole


def manifest(
    decoder: Decoder, outputs: list[tuple[OutputRole, list[int]]], **extra: Any
) -> Manifest:
    return Manifest(
        name="fake", version=1, profile="x86-avx2", created="2026-01-01T00:00:00Z",
        task="detection", decoder=decoder, model=ModelFile(sha256="0" * 64, size=1),
        input=InputSpec(shape=[1, 100, 200, 3], dtype="float32", mean=[0.0], std=[255.0]),
        outputs=[OutputSpec(name=f"out{i}", index=i, role=r, shape=s, dtype="float32")
                 for i, (r, s) in enumerate(outputs)],
        labels=["a", "b"], extra=extra,
    )  # fmt: skip


ANCHORS = np.array([[0.5, 0.25, 0.2, 0.4], [0.25, 0.75, 0.3, 0.3]], np.float32)  # cy, cx, h, w


def test_yxhw_decodes_tf_od_api_encodings_with_their_scales_and_keypoints() -> None:
    boxes = np.array([[0.4, 0.1, 0.6, 0.5], [0.1, 0.6, 0.45, 0.9]], np.float32)  # y0 x0 y1 x1
    coder = BoxCoder(10.0, 10.0, 5.0, 5.0)
    enc = encode(boxes, ANCHORS, coder)
    kp = np.array([[0.45, 0.2], [0.3, 0.7]], np.float32)  # one (y, x) keypoint per box
    kp_enc = (kp - ANCHORS[:, :2]) / ANCHORS[:, 2:] * [10.0, 10.0]
    raw = np.concatenate([enc, kp_enc], 1)[None].astype(np.float32)
    scores = np.array([[[-9, 3.0, -9], [-9, -9, 2.0]]], np.float32)  # background first, softmax
    m = manifest(
        Decoder.SSD_RAW, [(R.RAW_BOXES, [1, 2, 6]), (R.RAW_SCORES, [1, 2, 3])],
        anchor_data=anchor_data(ANCHORS), box_coding="yxhw", box_scales=[10, 10, 5, 5],
        extra_values=2, score_activation="softmax", background_class=True,
    )  # fmt: skip
    dec = make_decoder(m, score_threshold=0.5)
    dets = sorted(dec({R.RAW_BOXES: raw, R.RAW_SCORES: scores}, None), key=lambda d: d.class_id)
    assert [d.class_id for d in dets] == [0, 1]
    for d, b, p in zip(dets, boxes, kp, strict=True):
        assert d.box is not None and d.keypoints is not None
        np.testing.assert_allclose(d.box.as_list(6), b[[1, 0, 3, 2]], atol=1e-5)
        np.testing.assert_allclose(d.keypoints, p[::-1], atol=1e-5)


def test_xywh_linear_sizes_against_the_anchor_or_the_input() -> None:
    raw = np.array([[[0.5, -0.5, 1.0, 0.5]]], np.float32)
    scores = np.array([[[5.0]]], np.float32)
    shapes = [(R.RAW_BOXES, [1, 1, 4]), (R.RAW_SCORES, [1, 1, 1])]
    one = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)  # cy, cx, h, w
    by_anchor = make_decoder(manifest(
        Decoder.SSD_RAW, shapes, anchors=one.tolist(), box_coding="xywh", background_class=False,
    ))  # fmt: skip
    (d,) = by_anchor({R.RAW_BOXES: raw, R.RAW_SCORES: scores}, None)
    # x = 0.5 + 0.5 * 0.4, y = 0.5 - 0.5 * 0.2, w = 1.0 * 0.4, h = 0.5 * 0.2
    np.testing.assert_allclose(d.box.as_list(6), [0.5, 0.35, 0.9, 0.45], atol=1e-6)  # type: ignore[union-attr]
    pixels = np.array([[[20.0, -10.0, 40.0, 20.0]]], np.float32)  # input 200 wide, 100 high
    by_input = make_decoder(manifest(
        Decoder.SSD_RAW, shapes, anchors=one.tolist(), box_coding="xywh", box_units="input",
        background_class=False,
    ))  # fmt: skip
    (d,) = by_input({R.RAW_BOXES: pixels, R.RAW_SCORES: scores}, None)
    np.testing.assert_allclose(d.box.as_list(6), [0.5, 0.3, 0.7, 0.5], atol=1e-6)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("shapes", "extra", "reason"),
    [
        ([[1, 896, 16], [1, 896, 1]], {"box_coding": "yxhw"},
         "raw_boxes is [1, 896, 16]; box coding yxhw needs 4 values per anchor (or set extra_values: 12)"),
        ([[1, 896, 16], [1, 896, 1]], {"extra_values": 10},
         "box coding yxhw with extra_values 10 needs 14 values per anchor (or set extra_values: 12)"),
        ([[1, 896, 4], [1, 800, 2]], {}, "raw_scores is [1, 800, 2]; the manifest's anchors number 896"),
        ([[1, 896, 4], [1, 896, 1]], {}, "with background_class true it needs 2 or more scores"),
        ([[1, 896, 4], [1, 896, 2]], {"extra_values": 3}, "extra_values must be an even count"),
    ],
)  # fmt: skip
def test_ssd_raw_refuses_outputs_that_do_not_fit_at_load(
    shapes: list[list[int]], extra: dict[str, Any], reason: str
) -> None:
    anchors = {"anchor_data": anchor_data(np.full((896, 4), 0.5, np.float32))}
    m = manifest(
        Decoder.SSD_RAW, [(R.RAW_BOXES, shapes[0]), (R.RAW_SCORES, shapes[1])], **anchors, **extra
    )
    with pytest.raises(
        DecoderError,
        match=reason.replace("[", r"\[")
        .replace("]", r"\]")
        .replace("(", r"\(")
        .replace(")", r"\)"),
    ):
        SSDRawDecoder(m)


def test_anchor_data_is_checked_against_its_sha256() -> None:
    data = anchor_data(ANCHORS)
    data["base64"] = anchor_data(ANCHORS[::-1].copy())["base64"]
    m = manifest(
        Decoder.SSD_RAW, [(R.RAW_BOXES, [1, 2, 4]), (R.RAW_SCORES, [1, 2, 3])], anchor_data=data
    )
    with pytest.raises(DecoderError, match="does not match its sha256"):
        make_decoder(m)


def test_ssd_anchor_generator_matches_mediapipe_style_face_detector_anchors() -> None:
    """A 128x128 short-range face detector's parameters give its 896 anchors: 16x16 cells with
    2 anchors, then 8x8 cells with 6 (three layers of stride 16 share one grid)."""
    a = ssd_anchors({
        "input_size": 128, "strides": [8, 16, 16, 16], "min_scale": 0.1484375, "max_scale": 0.75,
        "aspect_ratios": [1.0], "offsets": [0.5, 0.5], "fixed_anchor_size": True,
    })  # fmt: skip
    assert a.shape == (896, 4)
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(a[1], a[0])
    np.testing.assert_allclose(a[2], [0.5 / 16, 1.5 / 16, 1, 1])
    np.testing.assert_allclose(a[512:518], [[0.5 / 8, 0.5 / 8, 1, 1]] * 6)
    sized = ssd_anchors({"input_size": [64, 32], "strides": [32], "scales": [0.5],
                         "aspect_ratios": [1.0, 4.0], "interpolated_scale_aspect_ratio": 0})  # fmt: skip
    assert sized.shape == (4, 4)  # a 2x1 grid, two ratios
    np.testing.assert_allclose(sized[1], [0.25, 0.5, 0.25, 1.0])
    with pytest.raises(ValueError, match="more than"):
        ssd_anchors({"input_size": 100000, "strides": [1], "scales": [0.1]})
    # a misspelt key would leave its default in place and silently make other anchors
    with pytest.raises(ValueError, match="unknown anchor-generator key 'aspect_ratio'"):
        ssd_anchors({"input_size": 64, "strides": [32], "scales": [0.5], "aspect_ratio": [2.0]})
    with pytest.raises(ValueError, match="the anchor generator needs strides"):
        ssd_anchors({"input_size": 64, "scales": [0.5]})


def test_tensor_limits_decide_full_or_summarized() -> None:
    m = manifest(Decoder.TENSOR, [(R.TENSOR, [1, 3]), (R.TENSOR, [1, 4]), (R.TENSOR, [2, 2])],
                 full_max_values=4, frame_max_values=7)  # fmt: skip
    dec = make_decoder(m)
    assert isinstance(dec, TensorDecoder) and dec.full == (True, True, False)
    out = dec.tensors(
        {0: np.zeros((1, 3)), 1: np.arange(4.0).reshape(1, 4), 2: np.array([[1.0, 5], [7, 2]])}
    )
    assert out["out1"] == {"shape": [1, 4], "values": [0.0, 1.0, 2.0, 3.0]}
    assert out["out2"] == {"shape": [2, 2], "min": 1.0, "max": 7.0, "argmax": [1, 0]}
    with pytest.raises(DecoderError, match="full_max_values must be"):
        make_decoder(manifest(Decoder.TENSOR, [(R.TENSOR, [1, 3])], full_max_values=-1))


@pytest.mark.parametrize(
    ("labels", "extra", "warned"),
    [
        (["???", "a", "b"], {}, "ssd_raw: raw_scores is [1, 2, 3]; that is 2 classes (after the "
         "background), the labels name 3 (set label_offset: 1 if the first label is the background)"),
        (["a"], {}, "that is 2 classes (after the background), the labels name 1"),
        (["a", "b", "c"], {"background_class": False}, None),
        (["???", "a", "b"], {"label_offset": 1}, None),
        (["a", "b"], {}, None),
        ([], {}, None),
    ],
)  # fmt: skip
def test_ssd_raw_warns_when_the_labels_do_not_name_its_classes(
    labels: list[str], extra: dict[str, Any], warned: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A TF OD API labels file starts with the background; without label_offset every
    detection would carry the label of the class before it."""
    m = manifest(
        Decoder.SSD_RAW, [(R.RAW_BOXES, [1, 2, 4]), (R.RAW_SCORES, [1, 2, 3])],
        anchor_data=anchor_data(ANCHORS), **extra,
    ).model_copy(update={"labels": labels})  # fmt: skip
    with caplog.at_level("WARNING", logger="agent.decoders"):
        make_decoder(m)
    got = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned is None:
        assert got == []
    else:
        assert len(got) == 1 and warned in got[0], got


def test_classifier_warns_when_the_labels_do_not_name_its_classes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = manifest(Decoder.CLASSIFICATION, [(R.PROBABILITIES, [1, 3])])
    with caplog.at_level("WARNING", logger="agent.decoders"):
        make_decoder(m.model_copy(update={"labels": ["a", "b", "c"]}))
        assert caplog.records == []
        make_decoder(m.model_copy(update={"labels": ["background", "a", "b", "c"]}))
    (record,) = caplog.records
    assert record.getMessage() == (
        "classification: probabilities is [1, 3]; that is 3 classes, the labels name 4 "
        "(set label_offset: 1 if the first label is the background)"
    )
