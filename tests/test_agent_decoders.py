"""Decoders, boxes and the frame transform on outputs with known answers (pure logic, no model)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from agent.bundle.manifest import (
    Decoder,
    InputSpec,
    Manifest,
    ModelFile,
    OutputRole,
    OutputSpec,
    ResizeMode,
)
from agent.decoders import (
    BBox,
    ClassificationDecoder,
    DecoderError,
    SSDPostprocessDecoder,
    SSDRawDecoder,
    TensorDecoder,
    YoloDecoder,
    make_decoder,
)
from agent.geometry.anchors import grid_anchors
from agent.geometry.boxes import batched_nms, nms
from agent.geometry.letterbox import FrameTransform, fit, resize_image
from agent.preprocess import Normalizer, Preprocessor

R = OutputRole


def manifest(decoder: Decoder, outputs: list[tuple[OutputRole, list[int]]], **kw: Any) -> Manifest:
    return Manifest(
        name="fake",
        version=1,
        profile="x86-avx2",
        created="2026-01-01T00:00:00+00:00",
        task=kw.pop("task", "detection"),
        decoder=decoder,
        model=ModelFile(sha256="0" * 64, size=1),
        input=kw.pop(
            "input", InputSpec(shape=[1, 100, 200, 3], dtype="float32", mean=[0.0], std=[255.0])
        ),
        outputs=[
            OutputSpec(name=f"out{i}", index=i, role=role, shape=shape, dtype="float32")
            for i, (role, shape) in enumerate(outputs)
        ],
        labels=kw.pop("labels", ["cat", "dog", "bird"]),
        **kw,
    )


STRETCH = FrameTransform(
    src_w=400, src_h=300, in_w=200, in_h=100, scale_x=0.5, scale_y=1 / 3, pad_x=0, pad_y=0
)


def test_bbox_geometry() -> None:
    a, b = BBox(0, 0, 10, 10), BBox(5, 5, 15, 15)
    assert a.area == 100 and a.width == 10 and a.height == 10
    assert a.iou(b) == pytest.approx(25 / 175)
    assert a.iou(a) == 1.0
    assert a.iou(BBox(20, 20, 30, 30)) == 0.0
    assert a.scale(2, 3) == BBox(0, 0, 20, 30)
    assert a.translate(1, 2) == BBox(1, 2, 11, 12)
    assert BBox(5, 5, 1, 1).area == 0.0
    with pytest.raises(AttributeError):
        a.xmin = 3  # type: ignore[misc]


def test_nms_keeps_best_of_each_cluster() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.95, 0.5, 0.3], np.float32)
    assert nms(boxes, scores, 0.5, 10).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, 1).tolist() == [1]
    # Same boxes, different classes: nothing is suppressed across classes.
    classes = np.array([0, 1, 0, 2])
    assert sorted(batched_nms(boxes, scores, classes, 0.5, 10).tolist()) == [0, 1, 2, 3]


def test_frame_transform_stretch_and_letterbox() -> None:
    boxes = np.array([[0.25, 0.5, 0.75, 1.0]], np.float32)
    assert STRETCH.to_source(boxes).tolist() == [[100.0, 150.0, 300.0, 300.0]]
    spec = InputSpec(
        shape=[1, 320, 320, 3], dtype="uint8", scale=1.0, mean=[0.0], std=[1.0], resize="letterbox"
    )
    t = Preprocessor(spec).transform_for(640, 480)
    assert (t.scale_x, t.pad_x, t.pad_y) == (0.5, 0, 40)
    # The model-input box covering the picture area maps back to the whole frame.
    full = np.array([[0.0, 40 / 320, 1.0, 280 / 320]], np.float32)
    assert t.to_source(full).round(3).tolist() == [[0.0, 0.0, 640.0, 480.0]]


@pytest.mark.parametrize(
    ("src", "pad", "want"),
    [
        ((640, 480), (0, 40), [160.0, 240.0, 320.0, 400.0]),
        ((480, 640), (40, 0), [80.0, 320.0, 240.0, 480.0]),
    ],
    ids=["bars-top-bottom", "bars-left-right"],
)
def test_letterbox_maps_an_asymmetric_box_back(
    src: tuple[int, int], pad: tuple[int, int], want: list[float]
) -> None:
    """A box whose x and y extents differ, through letterboxes padded on either axis: swapping
    x and y anywhere on the way back gives another answer."""
    t = fit(src[0], src[1], 320, 320, ResizeMode.LETTERBOX)
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (0.5, 0.5, *pad)
    assert t.content_size == (src[0] // 2, src[1] // 2)
    box = np.array([[0.25, 0.5, 0.5, 0.75]], np.float32)  # xyxy on the 320x320 input
    assert t.to_source(box).tolist() == [want]
    w, h = src
    np.testing.assert_allclose(
        t.to_source_fraction(box), [[want[0] / w, want[1] / h, want[2] / w, want[3] / h]]
    )
    # The pixels land where the transform says: a 4-row-tall, 2-column-wide white block
    # (source pixels) shows up at the mapped place, halved, on a canvas of bars.
    img = np.zeros((h, w), np.uint8)
    img[100:108, 200:204] = 255
    pixels, t2 = resize_image(img, (320, 320), ResizeMode.LETTERBOX)
    assert t2 == t
    rows, cols = np.nonzero(pixels > 127)
    assert (rows.min(), rows.max() + 1) == (50 + pad[1], 54 + pad[1])
    assert (cols.min(), cols.max() + 1) == (100 + pad[0], 102 + pad[0])


@pytest.mark.parametrize(
    ("dtype", "scale", "zp", "order", "plain"),
    [
        ("int8", 1 / 255, -128, "rgb", False),
        ("uint8", 0.5, 3, "bgr", False),
        ("float32", 0.0, 0, "rgb", False),
        ("int8", 0.02, 0, "gray", False),
        ("int8", 1 / 255, -128, "rgb", True),  # the top-bit flip
        ("uint8", 1 / 255, 0, "bgr", True),  # the identity
        ("int8", 1 / 255, -127, "bgr", True),  # one-channel table
        ("int8", 1 / 255, -128, "bgr", True),  # the flip, straight from the frame
        ("uint8", 1 / 255, 0, "rgb", True),
        ("int8", 1 / 255, -128, "gray", True),
    ],
)
def test_preprocessor_matches_normalizer(
    dtype: str, scale: float, zp: int, order: str, plain: bool
) -> None:
    channels = 1 if order == "gray" else 3
    spec = InputSpec(
        shape=[1, 24, 32, channels],
        dtype=dtype,
        scale=scale,
        zero_point=zp,
        color_order=order,
        mean=[0.0] if plain else [10.0, 20.0, 30.0][:channels],
        std=[255.0] if plain else [50.0, 60.0, 70.0][:channels],
    )
    bgr = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    pre = Preprocessor(spec)
    x, t = pre(bgr)
    if order == "rgb":
        pixels = bgr[..., ::-1]
    elif order == "gray":
        import cv2

        pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None]
    else:
        pixels = bgr
    want = Normalizer.from_spec(spec)(np.ascontiguousarray(pixels))
    assert x.dtype == want.dtype and x.shape == (1, 24, 32, channels)
    np.testing.assert_array_equal(x, want)
    assert (t.scale_x, t.scale_y) == (1.0, 1.0)
    # Written into a caller's buffer (the interpreter's input, in the agent): same values, no new array.
    buf = np.full_like(want, 7)
    y, _ = pre(bgr, buf)
    assert y is buf
    np.testing.assert_array_equal(buf, want)
    with pytest.raises(ValueError, match="output buffer"):
        pre(bgr, np.zeros((1, 24, 32, channels), np.float64))


def test_ssd_postprocess_decoder() -> None:
    m = manifest(
        Decoder.SSD_POSTPROCESS,
        [(R.SCORES, [1, 4]), (R.BOXES, [1, 4, 4]), (R.COUNT, [1]), (R.CLASSES, [1, 4])],
    )
    dec = make_decoder(m, score_threshold=0.4)
    assert isinstance(dec, SSDPostprocessDecoder)
    outs = {
        R.BOXES: np.array(
            [[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2], [0, 0, 1, 1]]],
            np.float32,
        ),
        R.CLASSES: np.array([[1, 0, 2, 1]], np.float32),
        R.SCORES: np.array([[0.6, 0.9, 0.3, 0.99]], np.float32),
        R.COUNT: np.array([3], np.float32),  # the 4th row is padding and must be ignored
    }
    dets = dec(outs, STRETCH)
    assert [(d.label, round(d.score, 2)) for d in dets] == [("cat", 0.9), ("dog", 0.6)]
    # ymin, xmin, ymax, xmax normalized -> x, y in source pixels (400x300).
    assert dets[0].box == BBox(200.0, 150.0, 400.0, 300.0)
    assert dets[1].box == BBox(0.0, 0.0, 200.0, 150.0)


@pytest.mark.parametrize("small", [True, False], ids=["small", "array"])
def test_ssd_postprocess_box_order_known_answer(
    small: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The op's boxes are ymin, xmin, ymax, xmax: a box with different x and y extents, through
    a stretch (400x300 from 200x100) and a letterbox (640x480 into 320x320), on both paths."""
    import agent.decoders.ssd_postprocess as decoders

    if not small:
        monkeypatch.setattr(decoders.SSDPostprocessDecoder, "small_n", -1)
    m = manifest(
        Decoder.SSD_POSTPROCESS,
        [(R.SCORES, [1, 2]), (R.BOXES, [1, 2, 4]), (R.COUNT, [1]), (R.CLASSES, [1, 2])],
    )
    outs = {
        R.BOXES: np.array([[[0.1, 0.2, 0.4, 0.9], [0.5, 0.25, 0.75, 0.5]]], np.float32),
        R.CLASSES: np.array([[2, 0]], np.float32),
        R.SCORES: np.array([[0.9, 0.8]], np.float32),
        R.COUNT: np.array([2], np.float32),
    }
    dec = make_decoder(m, score_threshold=0.5)
    dets = dec(outs, STRETCH)
    assert [d.label for d in dets] == ["bird", "cat"]
    assert dets[0].box == BBox(
        pytest.approx(80.0), pytest.approx(30.0), pytest.approx(360.0), pytest.approx(120.0)
    )
    assert dets[1].box == BBox(
        pytest.approx(100.0), pytest.approx(150.0), pytest.approx(200.0), pytest.approx(225.0)
    )
    letterbox = fit(640, 480, 320, 320, ResizeMode.LETTERBOX)  # bars of 40 px top and bottom
    dets = dec(outs, letterbox)
    assert dets[1].box == BBox(
        pytest.approx(160.0), pytest.approx(240.0), pytest.approx(320.0), pytest.approx(400.0)
    )
    assert make_decoder(m, score_threshold=0.5)(outs, None)[0].box == BBox(
        pytest.approx(0.2), pytest.approx(0.1), pytest.approx(0.9), pytest.approx(0.4)
    )


@pytest.mark.parametrize("count", [0, 1, 7, 32, 33, 60])
@pytest.mark.parametrize(
    "transform",
    [None, FrameTransform(640, 480, 320, 320, 0.5, 0.5, 0.0, 40.0)],
    ids=["none", "letterbox"],
)
def test_ssd_postprocess_small_and_array_paths_agree(
    count: int, transform: FrameTransform | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to SMALL_N rows are read in plain Python; both paths give the same detections."""
    import agent.decoders.ssd_postprocess as decoders

    rows = 64
    rng = np.random.default_rng(count)
    yx = rng.uniform(-0.2, 1.2, (1, rows, 2)).astype(np.float32)  # some outside [0, 1]: clipped
    hw = rng.uniform(0.0, 0.6, (1, rows, 2)).astype(np.float32)
    scores = rng.choice([0.2, 0.3, 0.45, 0.5, 0.9], (1, rows)).astype(np.float32)  # ties
    outs = {
        R.BOXES: np.concatenate([yx, yx + hw], axis=-1),
        R.CLASSES: rng.integers(0, 4, (1, rows)).astype(np.float32),  # class 3 has no label
        R.SCORES: scores,
        R.COUNT: np.array([count], np.float32),
    }
    m = manifest(
        Decoder.SSD_POSTPROCESS,
        [(R.SCORES, [1, rows]), (R.BOXES, [1, rows, 4]), (R.COUNT, [1]), (R.CLASSES, [1, rows])],
    )
    dec = make_decoder(m, score_threshold=0.3, max_detections=20)
    small = dec(outs, transform)
    monkeypatch.setattr(decoders.SSDPostprocessDecoder, "small_n", -1)
    array = dec(outs, transform)
    assert [(d.class_id, d.label, d.score) for d in small] == [
        (d.class_id, d.label, d.score) for d in array
    ]
    assert len(array) == min(20, int((scores[0, :count] >= 0.3).sum()))
    for a, b in zip(small, array, strict=True):
        assert a.box is not None and b.box is not None
        np.testing.assert_allclose(
            [a.box.xmin, a.box.ymin, a.box.xmax, a.box.ymax],
            [b.box.xmin, b.box.ymin, b.box.xmax, b.box.ymax],
            rtol=1e-6,
            atol=1e-4,
        )


@pytest.mark.parametrize("small", [True, False], ids=["small", "array"])
def test_non_finite_outputs_never_become_detections(
    small: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken model's NaN or inf is dropped (it is no detection, nor a JSON number), the same
    way on both SSD post-process paths; infinite box corners are clipped like finite ones."""
    import agent.decoders.ssd_postprocess as decoders

    if not small:
        monkeypatch.setattr(decoders.SSDPostprocessDecoder, "small_n", -1)
    nan, inf = float("nan"), float("inf")
    boxes = [[0.1, 0.1, 0.5, 0.5], [nan, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5],
             [0.2, -inf, 0.6, inf], [0.1, 0.1, 0.5, 0.5]]  # fmt: skip
    m = manifest(
        Decoder.SSD_POSTPROCESS,
        [(R.SCORES, [1, 6]), (R.BOXES, [1, 6, 4]), (R.COUNT, [1]), (R.CLASSES, [1, 6])],
    )
    outs = {
        R.BOXES: np.array([boxes], np.float32),
        R.CLASSES: np.array([[0, 1, nan, 1, 2, 0]], np.float32),
        R.SCORES: np.array([[0.9, 0.8, 0.7, inf, 0.6, nan]], np.float32),
        R.COUNT: np.array([6], np.float32),
    }
    dets = make_decoder(m, score_threshold=0.3)(outs, None)
    assert [(d.label, d.score) for d in dets] == [
        ("cat", pytest.approx(0.9)),
        ("bird", pytest.approx(0.6)),
    ]
    assert dets[1].box == BBox(0.0, pytest.approx(0.2), 1.0, pytest.approx(0.6))
    for count, expected in ((nan, 0), (-3.0, 0), (inf, 2)):  # a broken count: 0, or every row
        outs[R.COUNT] = np.array([count], np.float32)
        assert len(make_decoder(m, score_threshold=0.3)(outs, None)) == expected
    # The array decoders and the classifier drop them too.
    y = np.array([[[0.5, 0.5, 0.2, nan, 0.9, 0.0], [0.2, 0.2, 0.1, 0.1, 0.0, 0.8]]], np.float32)
    yolo = make_decoder(manifest(Decoder.YOLO, [(R.YOLO, [1, 2, 6])]), score_threshold=0.5)
    assert [d.label for d in yolo({R.YOLO: y}, None)] == ["dog"]
    cls = manifest(Decoder.CLASSIFICATION, [(R.PROBABILITIES, [1, 3])], task="classification")
    top = make_decoder(cls, top_k=3)(
        {R.PROBABILITIES: np.array([[0.2, nan, 0.7]], np.float32)}, None
    )
    assert [d.label for d in top] == ["bird", "cat"]


def test_ssd_raw_decoder_decodes_and_suppresses() -> None:
    anchors = [[0.25, 0.25, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.2, 0.4]]
    m = manifest(
        Decoder.SSD_RAW,
        [(R.RAW_BOXES, [1, 3, 4]), (R.RAW_SCORES, [1, 3, 3])],
        extra={"anchors": anchors, "score_activation": "none", "background_class": True},
    )
    dec = make_decoder(m, score_threshold=0.5)
    assert isinstance(dec, SSDRawDecoder)
    enc = np.zeros((1, 3, 4), np.float32)
    enc[0, 1] = [0.0, 0.0, 5 * math.log(1.2), 0.0]  # same center, 20% taller: overlaps anchor 0
    enc[0, 2] = [10 * 0.1, 0.0, 0.0, 0.0]  # center moves down by 0.1 * anchor height
    scores = np.array([[[0.1, 0.8, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.6]]], np.float32)
    dets = dec({R.RAW_BOXES: enc, R.RAW_SCORES: scores}, None)
    assert [(d.label, d.score) for d in dets] == [
        ("cat", pytest.approx(0.8)),
        ("dog", pytest.approx(0.6)),
    ]
    b = dets[1].box
    assert b is not None
    assert (b.xmin, b.xmax) == (pytest.approx(0.55), pytest.approx(0.95))
    assert (b.ymin, b.ymax) == (pytest.approx(0.67), pytest.approx(0.87))


def test_ssd_raw_box_order_known_answer() -> None:
    """Encodings are (ty, tx, th, tw) against (cy, cx, h, w) anchors: one anchor, moved and
    grown differently along each axis, decodes to one xyxy box in source pixels."""
    m = manifest(
        Decoder.SSD_RAW,
        [(R.RAW_BOXES, [1, 1, 4]), (R.RAW_SCORES, [1, 1, 2])],
        extra={
            "anchors": [[0.3, 0.6, 0.2, 0.4]],
            "score_activation": "none",
            "background_class": False,
        },
    )
    dec = make_decoder(m, score_threshold=0.5)
    # y moves down by half the anchor height (0.1), x left by a quarter of its width (0.1); the
    # height grows by half (0.3), the width stays 0.4: center (0.4, 0.5).
    enc = np.array([[[10 * 0.5, 10 * -0.25, 5 * math.log(1.5), 0.0]]], np.float32)
    (det,) = dec({R.RAW_BOXES: enc, R.RAW_SCORES: np.array([[[0.1, 0.9]]], np.float32)}, None)
    assert det.label == "dog" and det.box is not None
    np.testing.assert_allclose(
        [det.box.xmin, det.box.ymin, det.box.xmax, det.box.ymax], [0.3, 0.25, 0.7, 0.55], atol=1e-6
    )
    (det,) = dec({R.RAW_BOXES: enc, R.RAW_SCORES: np.array([[[0.1, 0.9]]], np.float32)}, STRETCH)
    assert det.box is not None
    np.testing.assert_allclose(
        [det.box.xmin, det.box.ymin, det.box.xmax, det.box.ymax],
        [120.0, 75.0, 280.0, 165.0],
        rtol=1e-5,
    )


def test_ssd_raw_anchor_grid_and_mismatch() -> None:
    a = grid_anchors(
        {"feature_maps": [[2, 2], [1, 1]], "scales": [0.5, 0.9], "aspect_ratios": [1.0, 4.0]}
    )
    assert a.shape == (10, 4)
    np.testing.assert_allclose(a[0], [0.25, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(a[1], [0.25, 0.25, 0.25, 1.0])
    np.testing.assert_allclose(a[-1], [0.5, 0.5, 0.45, 1.8])
    # Levels with several scales: every ratio at the first scale, then squares at the others.
    b = grid_anchors({"feature_maps": [1], "scales": [[0.2, 0.3]], "aspect_ratios": [1.0, 4.0]})
    np.testing.assert_allclose(
        b, [[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.1, 0.4], [0.5, 0.5, 0.3, 0.3]], rtol=1e-6
    )
    m = manifest(
        Decoder.SSD_RAW,
        [(R.RAW_BOXES, [1, 7, 4]), (R.RAW_SCORES, [1, 7, 3])],
        extra={"anchors": [[0, 0, 1, 1]]},
    )
    with pytest.raises(
        DecoderError, match=r"raw_boxes is \[1, 7, 4\]; the manifest.s anchors number 1"
    ):
        make_decoder(m)
    # The converter zoo's form: a grid spec under "anchors" and a box_coder mapping.
    spec = {"feature_maps": [2], "scales": [[0.5]], "aspect_ratios": [1.0]}
    coder = {"y_scale": 1.0, "x_scale": 1.0, "h_scale": 1.0, "w_scale": 1.0}
    m = manifest(
        Decoder.SSD_RAW,
        [(R.RAW_BOXES, [1, 4, 4]), (R.RAW_SCORES, [1, 4, 2])],
        extra={
            "anchors": spec,
            "box_coder": coder,
            "background_class": False,
            "score_activation": "none",
        },
    )
    dec = make_decoder(m, score_threshold=0.5)
    assert isinstance(dec, SSDRawDecoder) and dec.coding.scales == (1.0, 1.0, 1.0, 1.0)
    enc = np.zeros((1, 4, 4), np.float32)
    enc[0, 3] = [0.1, 0.0, 0.0, 0.0]  # anchor 3 (row 1, col 1) moves down by 0.1 * its height
    scores = np.array([[[0.0, 0.1], [0.0, 0.1], [0.0, 0.1], [0.9, 0.0]]], np.float32)
    (det,) = dec({R.RAW_BOXES: enc, R.RAW_SCORES: scores}, None)
    assert det.label == "cat" and det.box is not None
    assert (det.box.xmin, det.box.ymin, det.box.ymax) == (
        pytest.approx(0.5),
        pytest.approx(0.55),
        pytest.approx(1.0),
    )
    m = manifest(Decoder.SSD_RAW, [(R.RAW_BOXES, [1, 7, 4]), (R.RAW_SCORES, [1, 7, 3])])
    with pytest.raises(DecoderError, match="anchors"):
        make_decoder(m)


def test_yolo_decoder_normalized_and_pixels() -> None:
    rows = np.array(
        [
            [0.5, 0.5, 0.2, 0.4, 0.1, 0.9, 0.0],  # dog, centered
            [0.52, 0.5, 0.2, 0.4, 0.1, 0.8, 0.0],  # duplicate dog: suppressed
            [0.52, 0.5, 0.2, 0.4, 0.7, 0.1, 0.0],  # cat on the same spot: kept (other class)
            [0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.3],  # below threshold
        ],
        np.float32,
    )[None]
    m = manifest(Decoder.YOLO, [(R.YOLO, [1, 4, 7])], labels=["cat", "dog", "bird"])
    dec = make_decoder(m, score_threshold=0.5)
    assert isinstance(dec, YoloDecoder)
    dets = dec({R.YOLO: rows}, STRETCH)
    assert [(d.label, round(d.score, 2)) for d in dets] == [("dog", 0.9), ("cat", 0.7)]
    assert dets[0].box == BBox(
        pytest.approx(160.0), pytest.approx(90.0), pytest.approx(240.0), pytest.approx(210.0)
    )
    # The same answer from a transposed, pixel-unit layout (model input 200x100).
    px = rows.copy()
    px[0, :, [0, 2]] *= 200
    px[0, :, [1, 3]] *= 100
    m2 = manifest(
        Decoder.YOLO, [(R.YOLO, [1, 7, 4])], extra={"box_units": "pixels", "transposed": True}
    )
    dets2 = make_decoder(m2, score_threshold=0.5)({R.YOLO: px.transpose(0, 2, 1)}, STRETCH)
    assert [(d.label, d.box) for d in dets2] == [(d.label, d.box) for d in dets]


def test_yolo_with_one_class_too_many_hints_objectness(caplog: pytest.LogCaptureFixture) -> None:
    """A YOLOv5-style export ([1, N, 5 + C]) read without objectness has one class too many."""
    m = manifest(Decoder.YOLO, [(R.YOLO, [1, 25200, 85])], labels=[f"c{i}" for i in range(80)])
    with caplog.at_level("WARNING", logger="agent.decoders"):
        make_decoder(m)
        make_decoder(m.model_copy(update={"extra": {"objectness": True}}))
    (record,) = caplog.records
    assert record.getMessage() == (
        "yolo is [1, 25200, 85]; as [1, N, 4 + C] that is 81 classes, the labels name 80 "
        "(or set objectness: true, for a 5th column that scores any object; or set "
        "transposed: true)"
    )


def test_classification_top_k_from_logits() -> None:
    m = manifest(Decoder.CLASSIFICATION, [(R.LOGITS, [1, 3])], task="classification")
    dec = make_decoder(m, top_k=2)
    assert isinstance(dec, ClassificationDecoder)
    dets = dec({R.LOGITS: np.array([[0.0, 2.0, 1.0]], np.float32)}, None)
    e = np.exp([0.0, 2.0, 1.0])
    assert [d.label for d in dets] == ["dog", "bird"]
    assert dets[0].score == pytest.approx(e[1] / e.sum(), rel=1e-5)
    assert all(d.box is None for d in dets)


def test_decoder_is_chosen_by_manifest_never_guessed() -> None:
    # A YOLO-shaped output declared as a tensor is not decoded as detections.
    m = manifest(Decoder.TENSOR, [(R.TENSOR, [1, 4, 7])])
    dec = make_decoder(m)
    assert isinstance(dec, TensorDecoder)
    out = np.arange(28, dtype=np.float32).reshape(1, 4, 7)
    assert dec({R.TENSOR: out}, None) == []
    assert dec.tensors({m.outputs[0].index: out})[m.outputs[0].name]["values"] == list(range(28))
    # A decoder whose roles are missing from the manifest is refused at load time.
    m = manifest(Decoder.SSD_POSTPROCESS, [(R.BOXES, [1, 4, 4])])
    with pytest.raises(DecoderError, match="role classes"):
        make_decoder(m)
