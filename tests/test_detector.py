"""The reference detector: dataset, mAP against pycocotools, export with the TFLite SSD
post-process op, int8 accuracy on held-out images, and the zoo and eval commands."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from agent.geometry.anchors import AnchorConfig, generate_anchors
from agent.geometry.boxes import BoxCoder, decode, encode, iou_matrix, to_corners
from converter.evaluation import Detections, coco_map
from converter.tasks import detection_folder as df
from converter.zoo import detection_data as dd
from converter.zoo.targets import match

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")  # keras' own array code

WEIGHTS = Path(__file__).resolve().parents[1] / "converter" / "zoo" / "weights" / "detector.keras"
# Floors set from measurement: on these 100 test images (int8, calibrated on 100 train images)
# mAP@0.5 measured 0.61 and mAP@0.5:0.95 0.37; the floors leave room for other CPUs' kernels.
INT8_MAP50_FLOOR = 0.45
INT8_MAP50_95_FLOOR = 0.25


def run(*args: Any) -> Result:
    from converter.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result: Result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# --- dataset -------------------------------------------------------------------------------


def test_samples_are_deterministic_and_splits_differ() -> None:
    a, b = dd.make_sample("test", 7, seed=3, size=96), dd.make_sample("test", 7, seed=3, size=96)
    assert (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.boxes, b.boxes)
        and np.array_equal(a.classes, b.classes)
    )
    other = dd.make_sample("train", 7, seed=3, size=96)
    assert not np.array_equal(a.image, other.image)
    assert not np.array_equal(a.image, dd.make_sample("test", 7, seed=4, size=96).image)
    for s in dd.generate("val", 20, seed=0, size=96):
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        assert len(s.boxes) == len(s.classes) >= 1
        assert np.all((s.boxes >= 0) & (s.boxes <= 1))
        assert np.all(s.boxes[:, 2] > s.boxes[:, 0]) and np.all(s.boxes[:, 3] > s.boxes[:, 1])
        assert set(s.classes.tolist()) <= set(range(len(dd.CLASSES)))


def test_digit_instances_are_disjoint_across_splits() -> None:
    pools = [p.reshape(len(p), -1) for p in dd._digits()]
    seen = [{row.tobytes() for row in p} for p in pools]
    assert sum(len(p) for p in pools) == 1797
    assert not (seen[0] & seen[2]) and not (seen[0] & seen[1]) and not (seen[1] & seen[2])


def test_folder_round_trip(tmp_path: Path) -> None:
    samples = list(dd.generate("test", 6, seed=1, size=96))
    dd.write_folder(tmp_path, samples, {"split": "test"})
    folder = df.read_folder(tmp_path)
    assert folder.labels == list(dd.CLASSES) and len(folder) == 6
    for i, s in enumerate(samples):
        assert np.array_equal(folder.image(i), s.image)
        assert np.allclose(folder.boxes[i], s.boxes, atol=0.01 / 96)
        assert np.array_equal(folder.classes[i], s.classes)
    doc = json.loads((tmp_path / df.ANNOTATIONS_FILE).read_text())
    assert {c["name"] for c in doc["categories"]} == set(dd.CLASSES)


def test_read_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(df.DatasetError, match="not found"):
        df.read_folder(tmp_path / "nope")
    with pytest.raises(df.DatasetError, match="annotations.json"):
        df.read_folder(tmp_path)
    (tmp_path / df.ANNOTATIONS_FILE).write_text(
        '{"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}], '
        '"annotations": [], "categories": []}'
    )
    with pytest.raises(df.DatasetError, match="missing image"):
        df.read_folder(tmp_path)


# --- anchors and mAP -----------------------------------------------------------------------


def test_box_coder_round_trip_and_matching() -> None:
    anchors = generate_anchors(AnchorConfig.for_input(160))
    assert anchors.shape == (AnchorConfig.for_input(160).count, 4)
    boxes = np.array([[0.1, 0.2, 0.3, 0.35], [0.5, 0.4, 0.95, 0.9]], np.float32)
    best = iou_matrix(to_corners(anchors), boxes).argmax(axis=0)
    coder = BoxCoder()
    assert np.allclose(
        decode(encode(boxes, anchors[best], coder), anchors[best], coder), boxes, atol=1e-5
    )
    box_t, cls_t = match(anchors, boxes, np.array([1, 3]), 4, coder)
    pos = box_t[:, 4] > 0
    assert pos.sum() >= 2 and set(np.nonzero(cls_t[pos, :4])[1].tolist()) == {1, 3}
    assert np.allclose(
        decode(box_t[pos, :4], anchors[pos], coder).min(axis=0)[:2],
        boxes.min(axis=0)[:2],
        atol=1e-5,
    )


def test_eval_maps_an_asymmetric_box_back_to_the_image() -> None:
    """`edgegap eval` reads yxyx boxes on a letterboxed input and scores them on the image: a
    box with different x and y extents comes back where it was (swapped axes would not)."""
    from agent.bundle.manifest import ResizeMode
    from agent.geometry.letterbox import fit
    from converter.zoo.evaluate import on_image

    t = fit(640, 480, 320, 320, ResizeMode.LETTERBOX)  # bars of 40 rows above and below
    det = Detections(np.array([[0.5, 0.25, 0.75, 0.5]], np.float32), np.array([0.9]), np.array([1]))
    # model input: y 160..240, x 80..160 -> image pixels y 240..400, x 160..320
    np.testing.assert_allclose(
        on_image(det, t).boxes, [[240 / 480, 160 / 640, 400 / 480, 320 / 640]], rtol=1e-6
    )


def _random_case(
    seed: int, classes: int = 3
) -> tuple[list[np.ndarray], list[np.ndarray], list[Detections]]:
    rng = np.random.default_rng(seed)
    gt_b, gt_c, dets = [], [], []
    for _ in range(10):
        k = int(rng.integers(0, 5))
        y, x = rng.uniform(0, 110, k), rng.uniform(0, 140, k)
        g = (
            np.stack([y, x, y + rng.uniform(5, 50, k), x + rng.uniform(5, 60, k)], 1)
            if k
            else np.zeros((0, 4))
        )
        c = rng.integers(0, classes, k)
        db, ds, dc = [], [], []
        for b, cc in zip(g, c, strict=True):
            if rng.random() < 0.85:
                db.append(b + rng.normal(0, rng.uniform(1, 8), 4))
                ds.append(rng.uniform(0.2, 1))
                dc.append(cc if rng.random() < 0.9 else rng.integers(0, classes))
        for _ in range(int(rng.integers(0, 4))):
            yy, xx = rng.uniform(0, 110), rng.uniform(0, 140)
            db.append([yy, xx, yy + rng.uniform(5, 40), xx + rng.uniform(5, 40)])
            ds.append(rng.uniform(0, 0.8))
            dc.append(rng.integers(0, classes))
        d = np.array(db, np.float64).reshape(-1, 4)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        gt_b.append(g)
        gt_c.append(c)
        dets.append(Detections(d, np.array(ds), np.array(dc, np.int64)))
    return gt_b, gt_c, dets


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_map_matches_pycocotools(seed: int) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_b, gt_c, dets = _random_case(seed)
    images, anns, res = [], [], []
    for i, (g, c, d) in enumerate(zip(gt_b, gt_c, dets, strict=True)):
        images.append({"id": i + 1, "width": 200, "height": 160})
        for b, cc in zip(g, c, strict=True):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(cc) + 1,
                    "iscrowd": 0,
                    "bbox": [b[1], b[0], b[3] - b[1], b[2] - b[0]],
                    "area": (b[3] - b[1]) * (b[2] - b[0]),
                }
            )
        for b, s, cc in zip(d.boxes, d.scores, d.classes, strict=True):
            res.append(
                {
                    "image_id": i + 1,
                    "category_id": int(cc) + 1,
                    "score": float(s),
                    "bbox": [b[1], b[0], b[3] - b[1], b[2] - b[0]],
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": j + 1, "name": str(j)} for j in range(3)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = coco_map(gt_b, gt_c, dets, 3)
    assert ours.map50_95 == pytest.approx(ev.stats[0], abs=1e-9)
    assert ours.map50 == pytest.approx(ev.stats[1], abs=1e-9)


def test_map_known_answers() -> None:
    gt = [np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([[0.2, 0.2, 0.6, 0.7]])]
    cls = [np.array([0]), np.array([1])]
    perfect = [Detections(g, np.array([0.9]), c) for g, c in zip(gt, cls, strict=True)]
    r = coco_map(gt, cls, perfect, 2)
    assert (r.map50, r.map50_95) == (pytest.approx(1.0), pytest.approx(1.0))
    assert coco_map(gt, cls, [Detections.empty(), Detections.empty()], 2).map50 == 0.0
    # class 0: a false positive ranked above the true positive gives precision 1/2 at full recall
    fp_first = [
        Detections(
            np.array([[0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.5, 0.5]]),
            np.array([0.9, 0.8]),
            np.array([0, 0]),
        ),
        Detections(gt[1], np.array([0.9]), cls[1]),
    ]
    assert coco_map(gt, cls, fp_first, 2).per_class_ap50 == pytest.approx({0: 0.5, 1: 1.0})
    # a class with no ground truth does not count
    assert coco_map(gt, cls, perfect, 3).map50 == pytest.approx(1.0)


# --- the committed detector, exported and converted ------------------------------------------


@pytest.fixture(scope="module")
def detector() -> Any:
    pytest.importorskip("tensorflow")
    import keras

    from converter.tasks.detector_config import read_sidecar

    cfg, doc = read_sidecar(WEIGHTS)
    return keras.models.load_model(WEIGHTS, compile=False), cfg, doc


@pytest.fixture(scope="module")
def test_folder(tmp_path_factory: pytest.TempPathFactory, detector: Any) -> Path:
    _, cfg, _ = detector
    root = tmp_path_factory.mktemp("det-test")
    dd.write_folder(
        root, list(dd.generate("test", 100, seed=0, size=cfg.input_size)), {"split": "test"}
    )
    return root


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, detector: Any) -> dict[str, bytes]:
    from converter.loading import quiet_native_stderr
    from converter.tasks.ssd import convert, export_saved_model
    from converter.zoo.detector import normalize

    model, cfg, _ = detector
    calib = normalize(
        np.stack([s.image for s in dd.generate("train", 100, seed=0, size=cfg.input_size)]), cfg
    )
    with quiet_native_stderr():
        saved = export_saved_model(model, cfg, tmp_path_factory.mktemp("det-saved") / "saved")
        return {"float": convert(saved), "int8": convert(saved, list(calib))}


def test_sidecar_matches_model(detector: Any) -> None:
    model, cfg, doc = detector
    assert [tuple(o.shape) for o in model.outputs] == [
        (None, cfg.anchors.count, 4),
        (None, cfg.anchors.count, cfg.num_classes),
    ]
    assert model.input.shape[1:] == (cfg.input_size, cfg.input_size, 3)
    assert doc["training"]["seed"] == 0 and doc["metrics"]["val_map50"] > 0.3
    assert WEIGHTS.stat().st_size < 4 * 1024 * 1024


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_export_has_postprocess_op_with_four_named_outputs(
    converted: dict[str, bytes], kind: str
) -> None:
    from agent.bundle.manifest import OutputRole
    from agent.runtime import open_model
    from converter.tasks.ssd import POSTPROCESS_OP, output_roles, roles_from_op

    model = open_model(converted[kind], 1)
    assert POSTPROCESS_OP in model.op_names()
    assert len(model.outputs) == 4
    by_name = dict(zip(output_roles(model.outputs), (o.index for o in model.outputs), strict=True))
    assert by_name == roles_from_op(converted[kind])  # names agree with the op's own output order
    shapes = {
        role: next(o.shape for o in model.outputs if o.index == idx)
        for role, idx in by_name.items()
    }
    assert shapes[OutputRole.BOXES][-1] == 4 and len(shapes[OutputRole.COUNT]) == 1
    assert model.inputs[0].dtype == (np.int8 if kind == "int8" else np.float32)


def test_numpy_post_process_matches_the_tflite_op(
    detector: Any, converted: dict[str, bytes]
) -> None:
    from converter.tasks.ssd import detections_from_raw, run_tflite_detector
    from converter.zoo.detector import normalize

    model, cfg, _ = detector
    x = normalize(
        np.stack([s.image for s in dd.generate("test", 8, seed=0, size=cfg.input_size)]), cfg
    )
    ours = detections_from_raw(*[np.asarray(v) for v in model.predict(x, verbose=0)], cfg)
    op = run_tflite_detector(converted["float"], x)
    for a, b in zip(ours, op, strict=True):
        assert len(a.scores) == len(b.scores)
        assert np.array_equal(a.classes, b.classes)
        assert np.allclose(a.boxes, b.boxes, atol=1e-4) and np.allclose(
            a.scores, b.scores, atol=1e-4
        )


def test_int8_model_detects_held_out_objects(
    detector: Any, converted: dict[str, bytes], test_folder: Path
) -> None:
    from converter.tasks.ssd import run_tflite_detector
    from converter.zoo.detector import normalize

    _, cfg, _ = detector
    folder = df.read_folder(test_folder)
    x = normalize(np.stack([folder.image(i) for i in range(len(folder))]), cfg)
    result = coco_map(
        folder.boxes, folder.classes, run_tflite_detector(converted["int8"], x), cfg.num_classes
    )
    assert result.map50 >= INT8_MAP50_FLOOR, result
    assert result.map50_95 >= INT8_MAP50_95_FLOOR, result


def test_convert_pipeline_bundle_and_eval_cli(
    detector: Any, test_folder: Path, tmp_path: Path
) -> None:
    from agent.bundle.loading import load_bundle
    from agent.bundle.manifest import Decoder, OutputRole
    from converter.pipeline import ConvertOptions, convert
    from converter.tasks.detection import DetectionTask
    from converter.tasks.ssd import roles_from_op
    from firmware_profiles import load_profile

    _, cfg, _ = detector
    dd.write_folder(tmp_path / "train", list(dd.generate("train", 60, seed=0, size=cfg.input_size)))
    task = DetectionTask()  # the pipeline gives it the source model, whose sidecar it reads
    opts = ConvertOptions(
        model=WEIGHTS, profile=load_profile("x86-avx2"), calibration=tmp_path / "train" / df.IMAGES_DIR,
        validation=DetectionTask(cfg).dataset(None, split="val", count=40),
        output=tmp_path / "bundle", labels=list(cfg.classes), task=task, force=True, fallback=False,
        latency_runs=3, calibration_samples=60,
    )  # fmt: skip
    result = convert(opts)
    bundle = load_bundle(tmp_path / "bundle")
    m = bundle.manifest
    assert m.task == "detection" and m.decoder is Decoder.SSD_POSTPROCESS
    assert m.extra["num_anchors"] == cfg.anchors.count and m.labels == list(cfg.classes)
    from_op = roles_from_op(bundle.model_bytes())
    assert {o.role: o.index for o in m.outputs} == from_op
    assert m.output(OutputRole.BOXES).shape[-1] == 4
    assert result.accuracy.metric == "map50" and result.accuracy.quant_value > 0.3
    ci = result.accuracy.detail["ci95"]  # bootstrap over the 40 validation images
    assert ci["map50"][0] <= result.accuracy.quant_value <= ci["map50"][1]
    assert ci["drop"][0] <= result.accuracy.drop <= ci["drop"][1]

    out = run("eval", WEIGHTS, tmp_path / "bundle", "--data", test_folder, "--count", "40")
    assert out.exit_code == 0, out.output
    rows = [ln for ln in out.output.splitlines() if "detector.keras" in ln or "TFLite" in ln]
    assert len(rows) == 2, out.output
    maps = [float(v) for ln in rows for v in ln.replace("│", " ").split() if v.startswith("0.")]
    assert len(maps) == 4 and min(maps) > 0.2, out.output


def test_a_detector_converted_with_fold_bgr_takes_bgr_and_scores_the_same(
    detector: Any, test_folder: Path, tmp_path: Path
) -> None:
    from agent.bundle.loading import load_bundle
    from converter.pipeline import ConvertOptions, convert
    from converter.tasks.detection import DetectionTask
    from firmware_profiles import load_profile

    _, cfg, _ = detector
    dd.write_folder(tmp_path / "train", list(dd.generate("train", 60, seed=0, size=cfg.input_size)))
    opts = ConvertOptions(
        model=WEIGHTS, profile=load_profile("x86-avx2"), calibration=tmp_path / "train" / df.IMAGES_DIR,
        validation=DetectionTask(cfg).dataset(None, split="val", count=40), output=tmp_path / "bundle",
        fold_bgr=True, force=True, fallback=False, latency_runs=3, calibration_samples=60,
    )  # fmt: skip
    result = convert(opts)
    m = load_bundle(tmp_path / "bundle").manifest
    assert m.input.color_order.value == "bgr" and m.metrics["bgr_folded_into"] == ["stem_conv"]
    # The gate compares against the original model on RGB; the folded int8 model keeps up with it.
    assert abs(result.accuracy.drop) < 0.05 and result.accuracy.quant_value > 0.3
    # eval feeds a BGR bundle BGR pixels; with them it scores what the float model scores.
    out = run("eval", WEIGHTS, tmp_path / "bundle", "--data", test_folder, "--count", "40")
    assert out.exit_code == 0, out.output
    rows = [ln for ln in out.output.splitlines() if "detector.keras" in ln or "TFLite" in ln]
    map50 = [
        float([v for v in ln.replace("│", " ").split() if v.startswith("0.")][0]) for ln in rows
    ]
    assert len(map50) == 2 and abs(map50[0] - map50[1]) < 0.05, out.output


def test_a_detector_sidecar_sets_the_input_normalization() -> None:
    from agent.bundle.manifest import ColorOrder
    from converter.pipeline import ConvertError, ConvertOptions, _normalization
    from converter.tasks.detection import DetectionTask
    from converter.tasks.detector_config import DetectorConfig
    from firmware_profiles import load_profile

    task = DetectionTask(DetectorConfig(mean=127.5, std=64.0))

    def opts(**given: Any) -> ConvertOptions:
        return ConvertOptions(
            model="d.keras",
            profile=load_profile("x86-avx2"),
            calibration="c",
            output=Path("o"),
            **given,
        )

    norm = _normalization(opts(), 3, task)
    assert (norm.mean, norm.std, norm.color_order) == ([127.5], [64.0], ColorOrder.RGB)
    assert _normalization(opts(mean=[127.5] * 3, color_order=ColorOrder.RGB), 3, task).std == [64.0]
    with pytest.raises(ConvertError, match="mean 127.5, std 64, rgb.*drop --mean"):
        _normalization(opts(mean=[0.0]), 3, task)
    with pytest.raises(ConvertError, match="drop --color-order"):
        _normalization(opts(color_order=ColorOrder.BGR), 3, task)
    assert _normalization(opts(mean=[0.0]), 3, DetectionTask(DetectorConfig())).mean == [0.0]


def test_convert_refuses_a_normalization_the_detector_sidecar_contradicts(tmp_path: Path) -> None:
    out = run(
        "convert",
        WEIGHTS,
        "--profile",
        "x86-avx2",
        "--calibration",
        tmp_path,
        "--std",
        "127.5",
        "--output",
        tmp_path / "b",
    )
    assert "drop --std" in one_line_error(out)


def test_eval_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    line = one_line_error(run("eval", WEIGHTS, "--data", tmp_path / "missing"))
    assert "data folder not found" in line
    (tmp_path / "empty").mkdir()
    assert "annotations.json" in one_line_error(run("eval", WEIGHTS, "--data", tmp_path / "empty"))
    dd.write_folder(tmp_path / "data", list(dd.generate("test", 2, size=64)))
    (tmp_path / "model.h5").write_bytes(b"x")
    assert "bundle folder or a .keras" in one_line_error(
        run("eval", tmp_path / "model.h5", "--data", tmp_path / "data")
    )
    assert "bundle" in one_line_error(run("eval", tmp_path, "--data", tmp_path / "data"))


def test_make_dataset_cli(tmp_path: Path) -> None:
    out = run(
        "zoo",
        "make-dataset",
        "--output",
        tmp_path / "d",
        "--split",
        "val",
        "--count",
        "5",
        "--size",
        "96",
    )
    assert out.exit_code == 0, out.output
    folder = df.read_folder(tmp_path / "d")
    assert len(folder) == 5 and folder.info["split"] == "val"
    assert np.array_equal(folder.image(4), dd.make_sample("val", 4, seed=0, size=96).image)
    assert "not empty" in one_line_error(run("zoo", "make-dataset", "--output", tmp_path / "d"))


def test_train_detector_cli_writes_model_and_sidecar(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    out = run("zoo", "train-detector", "--output", tmp_path / "m.keras", "--epochs", "1",
              "--train-count", "64", "--val-count", "16", "--input-size", "64")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "epoch 1/1" in out.output and "val mAP@0.5" in out.output
    import keras

    from converter.tasks.detector_config import read_sidecar

    cfg, doc = read_sidecar(tmp_path / "m.keras")
    assert doc["training"]["train_count"] == 64 and cfg.input_size == 64
    model = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert tuple(model.outputs[0].shape) == (None, cfg.anchors.count, 4)
    assert getattr(model, "optimizer", None) is None  # saved without optimizer state
    assert "must end in .keras" in one_line_error(
        run("zoo", "train-detector", "--output", tmp_path / "m.h5")
    )
    assert "multiple of 32" in one_line_error(
        run("zoo", "train-detector", "--output", tmp_path / "n.keras", "--input-size", "100")
    )


def test_the_float_fallback_keeps_a_detectors_outputs_float(detector: Any, tmp_path: Path) -> None:
    """Requantizing a calibrated detector (what the float fallback does for every model it
    tries) gives the post-processing op's float32 outputs, as the first conversion does, not the
    profile's int8 ones."""
    from agent.runtime import open_model
    from converter.data import Dataset
    from converter.loading import quiet_native_stderr
    from converter.quantize import make_converter, requantize
    from converter.tasks.detection import DetectionTask
    from converter.tasks.ssd import export_saved_model
    from converter.zoo.detector import normalize
    from firmware_profiles import load_profile

    model, cfg, _ = detector
    profile = load_profile("x86-avx2")
    assert profile.quantization.output_dtype.value == "int8"
    x = normalize(np.stack([s.image for s in dd.generate("train", 8, size=cfg.input_size)]), cfg)
    task = DetectionTask(cfg)
    with quiet_native_stderr():
        saved = export_saved_model(model, cfg, tmp_path / "saved")
        conv = make_converter(saved, profile, task, Dataset(x.astype(np.float32), None, "train"))
        conv._experimental_calibrate_only = True
        calibrated = bytes(conv.convert())
    quantized = open_model(requantize(calibrated, profile, task, []))
    assert quantized.inputs[0].dtype == np.int8
    assert [o.dtype for o in quantized.outputs] == [np.float32] * 4
    # what the fallback ranks layers by: the report's drop, without its bootstrap interval
    val = task.dataset(None, split="val", count=12)
    report = task.accuracy(lambda b: model(b, training=False), quantized, val)
    assert "ci95" in report.detail
    assert task.divergence(lambda b: model(b, training=False), quantized, val) == report.drop
