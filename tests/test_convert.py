"""The conversion pipeline on real Keras models, run in the real LiteRT interpreter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

pytest.importorskip("tensorflow")

from keras_models import (  # noqa: E402
    functional_with_subclassed_inner,
    outlier_classifier,
    pattern_data,
    sin_model,
    tiny_classifier,
    tiny_tensor_model,
)

from agent.bundle.golden import check_golden  # noqa: E402
from agent.bundle.loading import load_bundle  # noqa: E402
from agent.bundle.manifest import ColorOrder, OutputRole, ResizeMode  # noqa: E402
from agent.geometry.letterbox import resize_image  # noqa: E402
from agent.runtime import open_model  # noqa: E402
from converter.data import DataError, Dataset, Normalization, load_data  # noqa: E402
from converter.fallback import select_fewest  # noqa: E402
from converter.loading import ModelLoadError, load_model  # noqa: E402
from converter.pipeline import ConvertOptions, ConvertResult, convert, open_converted  # noqa: E402
from converter.report import comparison_table, summary_table  # noqa: E402
from converter.tasks.tensor import run_model  # noqa: E402
from firmware_profiles import Profile, load_profile, parse_profile, shipped_profile_names  # noqa: E402

SHIPPED = shipped_profile_names()
EXTRA_SCHEMES = {"float16": "float32", "dynamic-range": "float32", "int16x8": "int16"}
ALL_PROFILES = SHIPPED + [f"x86-{s}" for s in EXTRA_SCHEMES]


def scheme_profile(scheme: str, io: str) -> Profile:
    """x86-avx2 with another quantization scheme: the shipped profiles only use int8 schemes."""
    data = load_profile("x86-avx2").model_dump(mode="json")
    data["name"] = f"x86-{scheme}"
    data["quantization"] = {"scheme": scheme, "input_dtype": io, "output_dtype": io}
    return parse_profile(yaml.safe_dump(data), f"x86-{scheme}.yaml")


def profile_named(name: str) -> Profile:
    if name in SHIPPED:
        return load_profile(name)
    scheme = name.removeprefix("x86-")
    return scheme_profile(scheme, EXTRA_SCHEMES[scheme])


def tolerance(scheme: str, out_scale: float, float_out: np.ndarray) -> float:
    """Largest expected |tflite - keras| for a tiny two-layer model, from the quantization steps.

    Integer outputs: 3 output steps (input, weight and output rounding, each at most half a step).
    Float outputs of int8 or 16x8 models, and dynamic-range models, still carry int8 weights or
    activations: 3 steps of an int8 grid over the output range. float16: 3 ulps of half precision
    at the largest output.
    """
    if out_scale > 0 and scheme in ("int8", "int8-fallback"):
        return 3 * out_scale
    span = float(float_out.max() - float_out.min())
    if scheme == "float16":
        return 3 * 2.0**-10 * float(np.abs(float_out).max())
    return 3 * span / 255


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (96, 8, 8, 3)).astype(np.uint8)
    np.save(root / "calib.npy", pixels[:64])
    np.savez(root / "val.npz", x=pixels[64:])
    return {"root": root, "model": tiny_tensor_model(), "x": pixels[64:].astype(np.float32) / 255.0}


@pytest.fixture(scope="module")
def conversions(tiny: dict[str, Any]) -> dict[str, ConvertResult]:
    """One conversion per profile (shipped ones plus the three non-int8 schemes)."""
    out = {}
    for name in ALL_PROFILES:
        out[name] = convert(
            ConvertOptions(
                model=tiny["model"],
                profile=profile_named(name),
                calibration=tiny["root"] / "calib.npy",
                validation=tiny["root"] / "val.npz",
                output=tiny["root"] / name,
                task="tensor",
                name="tiny",
                version=3,
                latency_runs=5,
            )
        )
    return out


@pytest.mark.parametrize("name", ALL_PROFILES)
def test_bundle_is_named_by_what_it_holds(name: str, conversions: dict[str, ConvertResult]) -> None:
    """An int8-fallback profile's model with no float layer is an int8 bundle, in the manifest and the tables."""
    result = conversions[name]
    scheme = result.profile.quantization.scheme
    if scheme.is_integer:
        assert result.graph.float_layers == []  # the tiny model has an integer kernel for every op
    want = "int8" if scheme.value == "int8-fallback" else scheme.value
    assert result.scheme == result.manifest.metrics["quantization"] == want
    assert summary_table(result).columns[2].header == want
    assert list(comparison_table([result]).columns[1].cells) == [want]


@pytest.mark.parametrize("name", ALL_PROFILES)
def test_profile_conversion_matches_keras(
    name: str, conversions: dict[str, ConvertResult], tiny: dict[str, Any]
) -> None:
    result = conversions[name]
    profile = result.profile
    assert result.passed, result.reason
    bundle = load_bundle(tiny["root"] / name)
    m = bundle.manifest
    assert (m.name, m.version, m.profile, m.task) == ("tiny", 3, name, "tensor")
    assert m.gates["passed"] is True and m.gates["failed"] == []
    model = open_converted(bundle.model_bytes())
    want_in = profile.quantization.input_dtype.value
    want_out = profile.quantization.output_dtype.value
    assert np.dtype(model.inputs[0].dtype).name == want_in == m.input.dtype
    assert np.dtype(model.outputs[0].dtype).name == want_out == m.outputs[0].dtype
    assert m.input.shape == [1, 8, 8, 3] and m.input.mean == [0.0] and m.input.std == [255.0]
    assert m.input.color_order is ColorOrder.RGB and m.input.resize is ResizeMode.STRETCH
    assert (m.input.scale > 0) == (want_in != "float32")
    out = m.outputs[0]
    assert (
        out.role is OutputRole.TENSOR and out.name == "out" and out.index == model.outputs[0].index
    )

    got = run_model(model, tiny["x"])[0]
    want = tiny["model"].predict(tiny["x"], verbose=0)
    tol = tolerance(profile.quantization.scheme.value, out.scale, want)
    assert np.max(np.abs(got - want)) <= tol, (
        f"max error {np.max(np.abs(got - want)):.4g} > {tol:.4g}"
    )
    assert check_golden(open_model(bundle.model_bytes()), m).passed

    metrics = m.metrics
    assert metrics["size_bytes"] == m.model.size == len(bundle.model_bytes())
    assert metrics["size_float_bytes"] > 0 and metrics["latency_ms_p50"] > 0
    assert metrics["host_arch"] and metrics["latency_measured"].startswith(
        "device-class host" if name.startswith("x86") else "host-measured"
    )
    assert (tiny["root"] / name / "report.json").is_file()
    if profile.ops.allowlist is not None:
        assert set(result.graph.ops) <= set(profile.ops.allowlist)


def test_classifier_gets_probabilities_role_and_labels(tmp_path: Path) -> None:
    x, y = pattern_data(80, seed=1, classes=3)
    result = convert(
        ConvertOptions(
            model=tiny_classifier(),
            profile=load_profile("raspberry-pi-4"),
            calibration=Dataset(x[:40] / 255.0),
            validation=Dataset(x[40:].astype(np.float32) / 255.0, labels={"y": y[40:]}),
            output=tmp_path,
            labels=["a", "b", "c"],
            latency_runs=5,
        )
    )
    m = result.manifest
    assert m.task == "classification" and m.decoder.value == "classification"
    assert m.outputs[0].role is OutputRole.PROBABILITIES and m.labels == ["a", "b", "c"]
    assert (
        result.accuracy.metric == "top1_accuracy"  # labelled data: gated on the labels
        and "top1_agreement" in result.accuracy.detail
    )
    assert m.metrics["accuracy"]["samples"] == 40


def _save(model: Any, path: Path, kind: str) -> Path:
    if kind == "keras":
        model.save(path.with_suffix(".keras"))
        return path.with_suffix(".keras")
    if kind == "h5":
        model.save(path.with_suffix(".h5"))
        return path.with_suffix(".h5")
    model.export(str(path), format="tf_saved_model", verbose=False)
    return path


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:keras"
)  # raised inside keras' own saving code
@pytest.mark.parametrize(
    "kind,builder",
    [
        ("keras", functional_with_subclassed_inner),
        ("h5", tiny_tensor_model),
        ("saved_model", tiny_tensor_model),
    ],
)
def test_model_formats_load_and_convert(kind: str, builder: Any, tmp_path: Path) -> None:
    model = builder()
    path = _save(model, tmp_path / "model", kind)
    source = load_model(path)
    assert source.kind == kind and source.input_shape == (8, 8, 3)
    x = np.random.default_rng(3).random((16, 8, 8, 3)).astype(np.float32)
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(source.predict(x)[0], want, rtol=1e-5, atol=1e-5)
    result = convert(
        ConvertOptions(
            model=path,
            profile=load_profile("x86-avx2"),
            calibration=Dataset(x),
            output=tmp_path / "b",
            task="tensor",
            latency_runs=5,
        )
    )
    got = run_model(open_converted(result.model_bytes), x)[0]
    assert np.max(np.abs(got - want)) <= tolerance("int8", result.manifest.outputs[0].scale, want)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model not found"):
        load_model(tmp_path / "missing.keras")
    (tmp_path / "notes.keras").write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(tmp_path / "notes.keras")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ModelLoadError, match="without saved_model.pb"):
        load_model(tmp_path / "dir")


@pytest.fixture(scope="module")
def outlier() -> dict[str, Any]:
    x, y = pattern_data(600, seed=0)
    model = outlier_classifier(x[:400], y[:400])
    return {
        "model": model,
        "calibration": Dataset(x[:200].astype(np.float32) / 255.0),
        "validation": Dataset(x[400:].astype(np.float32) / 255.0, labels={"y": y[400:]}),
    }


def test_float_fallback_keeps_the_one_lossy_layer(outlier: dict[str, Any], tmp_path: Path) -> None:
    result = convert(
        ConvertOptions(
            model=outlier["model"],
            profile=load_profile("x86-avx2"),
            calibration=outlier["calibration"],
            validation=outlier["validation"],
            output=tmp_path,
            latency_runs=5,
        )
    )
    assert result.plain_accuracy.drop > 0.2  # full int8 really is broken here
    fb = result.fallback
    assert fb is not None and fb.passed
    assert [e.output for e in fb.float_layers] == [
        "logits"
    ]  # the layer with the outlier row, and only it
    assert (
        fb.ranking[0].output == "logits"
        and fb.ranking[0].rmse_steps > 10 * fb.ranking[1].rmse_steps
    )
    assert result.passed and result.accuracy.drop <= 0.01
    ops = result.graph.ops
    assert "DEQUANTIZE" in ops and "QUANTIZE" in ops  # the float island in the int8 graph
    assert np.dtype(open_converted(result.model_bytes).inputs[0].dtype).name == "int8"
    m = load_bundle(tmp_path).manifest
    assert m.metrics["float_fallback"]["used"] is True
    assert m.metrics["float_fallback"]["float_layers"] == [fb.float_layers[0].label]
    assert (
        result.scheme == m.metrics["quantization"] == "int8-fallback"
    )  # a layer really stayed float


def test_no_fallback_profile_fails_the_gate_and_writes_only_when_forced(
    outlier: dict[str, Any], tmp_path: Path
) -> None:
    opts = ConvertOptions(
        model=outlier["model"],
        profile=load_profile("esp32-s3-tflm"),
        calibration=outlier["calibration"],
        validation=outlier["validation"],
        output=tmp_path / "b",
        latency_runs=5,
    )
    result = convert(opts)
    assert not result.passed and result.fallback is None
    assert result.reason.startswith("gate accuracy failed") and result.bundle is None
    assert not (tmp_path / "b" / "model.tflite").exists()
    opts.force = True
    forced = convert(opts)
    m = load_bundle(tmp_path / "b").manifest
    assert (
        forced.bundle is not None
        and m.gates["passed"] is False
        and m.gates["failed"] == ["accuracy"]
    )
    assert m.gates["forced"] is True


def test_full_integer_profile_rejects_float_ops(tmp_path: Path) -> None:
    data = load_profile("esp32-s3-tflm").model_dump(mode="json")
    data["ops"]["allowlist"] = None  # any builtin: only the full-integer rule can fail it
    profile = parse_profile(yaml.safe_dump(data), "any-op-mcu.yaml")
    x = np.random.default_rng(5).random((20, 8, 8, 3)).astype(np.float32)
    result = convert(
        ConvertOptions(
            model=sin_model(),
            profile=profile,
            calibration=Dataset(x),
            output=tmp_path,
            task="tensor",
            latency_runs=3,
        )
    )
    assert not result.passed and result.bundle is None
    assert "float ops in a full-integer model" in result.reason and "SIN (1×)" in result.reason


def test_select_fewest_finds_a_non_prefix_minimum() -> None:
    ranked = ["a", "b", "c", "d", "e", "f"]
    calls: list[list[str]] = []

    def needs_a_and_d(chosen: list[str]) -> bool:
        calls.append(chosen)
        return {"a", "d"} <= set(chosen)

    assert select_fewest(ranked, needs_a_and_d) == ["a", "d"]
    assert len(calls) == len({tuple(c) for c in calls})  # no set evaluated twice
    assert select_fewest(ranked, lambda chosen: False) is None
    assert select_fewest([], lambda chosen: True) is None
    assert select_fewest(ranked, lambda chosen: "a" in chosen) == ["a"]
    assert select_fewest(ranked, needs_a_and_d, max_tries=2) is None  # budget spent before passing


def test_the_report_says_when_the_converted_model_is_slower_than_float() -> None:
    from converter.report import speed_note

    note = speed_note("int8", 1.068, 1.326, 0.413, "device-class host (x86_64)")
    assert (
        note is not None
        and "int8 ran 1.24x slower than float32 (device-class host (x86_64))" in note
    )
    assert "size (0.41x), not speed" in note
    assert speed_note("int8", 1.068, 1.10, 0.413, "host") is None  # within a short run's noise
    assert speed_note("int8", 2.0, 1.0, 0.3, "host") is None
    assert speed_note("int8", 0.0, 1.0, 0.3, "host") is None
    assert speed_note("int8", 0.002, 0.004, 0.9, "host") is None  # microseconds: call overhead


def test_image_folder_is_resized_normalized_and_color_ordered(tmp_path: Path) -> None:
    img = np.zeros((20, 10, 3), np.uint8)
    img[..., 2] = 200  # red, in OpenCV's BGR order
    (tmp_path / "cls_a").mkdir()
    cv2.imwrite(str(tmp_path / "cls_a" / "0.png"), img)
    cv2.imwrite(str(tmp_path / "cls_a" / "1.jpg"), img)
    rgb = load_data(tmp_path, (8, 8, 3), Normalization([100.0], [50.0], ColorOrder.RGB))
    assert rgb.x.shape == (2, 8, 8, 3) and rgb.labels["class_names"] == ["cls_a"]
    np.testing.assert_allclose(rgb.x[0, 4, 4], [2.0, -2.0, -2.0], atol=0.05)
    bgr = load_data(
        tmp_path, (8, 8, 3), Normalization([0.0, 0.0, 100.0], [1.0, 1.0, 2.0], ColorOrder.BGR)
    )
    np.testing.assert_allclose(bgr.x[0, 4, 4], [0.0, 0.0, 50.0], atol=1.0)
    boxed, _ = resize_image(img, (8, 8), ResizeMode.LETTERBOX)
    assert boxed.shape == (8, 8, 3) and boxed[4, 0].sum() == 0 and boxed[4, 4, 2] == 200


def test_data_errors_are_clear(tmp_path: Path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((4, 10, 10, 3), np.uint8))
    with pytest.raises(DataError, match=r"shape \(10, 10, 3\) but the model takes \(8, 8, 3\)"):
        load_data(tmp_path / "small.npy", (8, 8, 3), Normalization())
    with pytest.raises(DataError, match="one per channel"):
        load_data(tmp_path / "small.npy", (10, 10, 3), Normalization([1.0, 2.0]))
    with pytest.raises(DataError, match="not found"):
        load_data(tmp_path / "nope.npy", (8, 8, 3), Normalization())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jpg or .png"):
        load_data(tmp_path / "empty", (8, 8, 3), Normalization())
    gray = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    np.save(tmp_path / "gray.npy", gray)
    data = load_data(tmp_path / "gray.npy", (8, 8, 1), Normalization(color_order=ColorOrder.GRAY))
    np.testing.assert_allclose(data.x[..., 0], gray / 255.0, rtol=1e-6)


def test_digits_cnn_from_an_image_folder(tmp_path: Path) -> None:
    """The zoo's digits CNN on real data: PNGs in class folders in, a passing int8 bundle out."""
    from converter.zoo.digits import train_digits_cnn, write_image_folder

    model, data = train_digits_cnn(epochs=3, width=8, dense=32)
    folder = write_image_folder(data.train_x[:100], data.train_y[:100], tmp_path / "calib")
    np.savez(tmp_path / "val.npz", x=data.test_x, y=data.test_y)
    result = convert(
        ConvertOptions(
            model=model,
            profile=load_profile("x86-avx2"),
            calibration=folder,
            validation=tmp_path / "val.npz",
            output=tmp_path / "bundle",
            latency_runs=5,
        )
    )
    assert result.passed, result.reason
    m = result.manifest
    assert m.input.color_order is ColorOrder.GRAY and m.input.shape == [1, 16, 16, 1]
    assert result.calibration_source.startswith("100 images")
    assert result.accuracy.detail["float_top1_accuracy"] > 0.8
    assert result.accuracy.detail["top1_agreement"] >= 0.99
    assert (
        m.metrics["size_ratio"] < 0.5
    )  # a tiny model: flatbuffer overhead weighs more than in the benchmark
