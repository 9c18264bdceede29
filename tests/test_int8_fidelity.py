"""Int8 that stays int8: the fallback budget, pixel-exact input, and label-accuracy gates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from click.testing import CliRunner  # noqa: E402
from keras_models import outlier_classifier, pattern_data  # noqa: E402

from agent.bundle.golden import check_golden  # noqa: E402
from agent.bundle.loading import load_bundle  # noqa: E402
from agent.bundle.manifest import ColorOrder, InputSpec  # noqa: E402
from agent.preprocess import Normalizer, Preprocessor  # noqa: E402
from agent.runtime import TensorInfo  # noqa: E402
from converter.cli import cli  # noqa: E402
from converter.data import Dataset, Normalization  # noqa: E402
from converter.intervals import wilson  # noqa: E402
from converter.manifest import open_converted  # noqa: E402
from converter.pipeline import ConvertOptions, convert  # noqa: E402
from converter.pixel_input import fold_normalization  # noqa: E402
from converter.tasks.tensor import quantize_input, run_model  # noqa: E402
from firmware_profiles import load_profile  # noqa: E402

# (mean, std, input dtype, scale, zero point): ties (127.5), the default (/255), ImageNet-like
# per-channel statistics, and the pixel-exact input of a folded model (int8 and uint8).
INPUTS = [
    (127.5, 127.5, "int8", 2 / 255, -1),
    (127.5, 127.5, "int8", float(np.float32(0.007843138)), -1),
    (0.0, 255.0, "int8", 1 / 255, -128),
    (123.675, 58.395, "int8", 0.017513, -7),
    (128.0, 1.0, "int8", 1.0, 0),
    (128.0, 1.0, "uint8", 1.0, 128),
]


@pytest.mark.parametrize(("mean", "std", "dtype", "scale", "zp"), INPUTS)
def test_host_and_agent_make_the_same_input_for_every_pixel(
    mean: float, std: float, dtype: str, scale: float, zp: int
) -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 256, 1)
    spec = InputSpec(
        name="x",
        shape=[1, 1, 256, 1],
        dtype=dtype,
        scale=scale,
        zero_point=zp,
        color_order=ColorOrder.GRAY,
        mean=[mean],
        std=[std],
    )
    device = Preprocessor(spec)(np.repeat(pixels.reshape(1, 256, 1), 3, axis=2))[0]
    info = TensorInfo("x", 0, (1, 1, 256, 1), np.dtype(dtype), scale, zp)
    host = quantize_input(Normalization([mean], [std], ColorOrder.GRAY).apply(pixels), info)
    assert np.array_equal(Normalizer.from_spec(spec)(pixels)[0], host)
    assert np.array_equal(device[0], host)
    if std == 1.0:  # the folded model's input is the pixel itself, shifted: no level lost
        assert np.array_equal(
            host.ravel().astype(np.int64), np.arange(256) - 128 + (zp if dtype == "uint8" else 0)
        )


def _bordered_model() -> Any:
    """'same'-padded convolutions, the first without a bias (a batch normalization follows)."""
    import keras

    keras.utils.set_random_seed(7)
    inp = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(4, 1, name="c2")(x)
    model = keras.Model(inp, x, name="bordered")
    bn = model.get_layer("bn1")
    rng = np.random.default_rng(0)
    bn.set_weights(
        [
            rng.uniform(0.5, 1.5, 6),
            rng.normal(0, 0.2, 6),
            rng.normal(0, 0.3, 6),
            rng.uniform(0.5, 2, 6),
        ]
    )
    return model


def _pixels(n: int, seed: int) -> np.ndarray:
    """Smooth images with bright and dark borders, so the padding matters."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 3, 3, 3)).astype(np.float32)
    import cv2

    imgs = np.stack([cv2.resize(b, (12, 12), interpolation=cv2.INTER_LINEAR) for b in base])
    imgs[:, 0, :, :] = 255
    imgs[:, :, 0, :] = 0
    return np.clip(imgs, 0, 255).astype(np.uint8)


def test_pixel_exact_uint8_input_is_the_pixel(tmp_path: Path) -> None:
    norm = Normalization([127.5], [127.5])
    result = convert(
        ConvertOptions(
            model=_bordered_model(),
            profile=load_profile("coral-edgetpu"),
            calibration=Dataset(norm.apply(_pixels(32, 2))),
            mean=[127.5],
            std=[127.5],
            task="tensor",
            output=tmp_path,
            latency_runs=3,
            force=True,
        )
    )
    m = result.manifest
    assert (m.input.dtype, m.input.scale, m.input.zero_point) == ("uint8", 1.0, 128)
    px = _pixels(1, 3)[0]
    assert np.array_equal(Preprocessor(m.input)(px[..., ::-1].copy())[0][0], px)


def test_pixel_exact_input_matches_float_borders_included(tmp_path: Path) -> None:
    model = _bordered_model()
    norm = Normalization([127.5], [127.5])
    folded, fold = fold_normalization(model, norm)
    assert fold.layers == ["c1", "bn1"] and fold.border_levels == 0.5
    px = _pixels(64, 1)
    want = np.asarray(model.predict(norm.apply(px), verbose=0))
    got = np.asarray(folded.predict(px.astype(np.float32) - 128, verbose=0))
    span = float(want.max() - want.min())
    assert np.abs(got - want)[:, 2:-2, 2:-2].max() < 1e-4 * span  # exact past two 3x3 paddings
    assert np.abs(got - want).max() < 0.01 * span  # half a level off, at the border only
    result = convert(
        ConvertOptions(
            model=model,
            profile=load_profile("x86-avx2"),
            calibration=Dataset(norm.apply(_pixels(64, 2))),
            validation=Dataset(norm.apply(px)),
            mean=[127.5],
            std=[127.5],
            task="tensor",
            output=tmp_path,
            latency_runs=3,
            force=True,
        )
    )
    info = open_converted(result.model_bytes).inputs[0]
    assert (info.scale, info.zero_point) == (1.0, 0)
    m = result.manifest
    assert (m.input.mean, m.input.std) == ([128.0] * 3, [1.0] * 3)
    assert m.metrics["pixel_input"]["pixel_exact"] and m.metrics["pixel_input"]["folded_into"] == [
        "c1",
        "bn1",
    ]
    fed = Preprocessor(m.input)(px[0][..., ::-1].copy())[0]  # the device gets BGR frames
    assert np.array_equal(fed[0].astype(np.int64), px[0].astype(np.int64) - 128)
    quant = run_model(open_converted(result.model_bytes), px.astype(np.float32) - 128)[0]
    out_scale = open_converted(result.model_bytes).outputs[0].scale
    err = np.abs(quant - want)
    assert err.max() <= 4 * out_scale, (err.max(), out_scale)  # borders included
    bundle = load_bundle(tmp_path)
    assert check_golden(open_converted(bundle.model_path.read_bytes()), bundle.manifest).passed


@pytest.fixture(scope="module")
def outlier_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("outlier")
    x, y = pattern_data(600, seed=0)
    model = outlier_classifier(x[:400], y[:400])
    model.save(d / "outlier.keras")
    np.savez(d / "calib.npz", x=x[:200].astype(np.uint8))
    np.savez(d / "val.npz", x=x[400:].astype(np.uint8), y=y[400:])
    np.savez(d / "val_unlabelled.npz", x=x[400:].astype(np.uint8))
    return {
        "model": d / "outlier.keras",
        "calib": d / "calib.npz",
        "val": d / "val.npz",
        "plain": d / "val_unlabelled.npz",
    }


def _convert_cli(files: dict[str, Path], out: Path, *extra: str, val: str = "val") -> Any:
    args = [
        "convert",
        str(files["model"]),
        "--profile",
        "x86-avx2",
        "--calibration",
        str(files["calib"]),
    ]
    args += ["--validation", str(files[val]), "--latency-runs", "3", "--output", str(out), *extra]
    return CliRunner().invoke(cli, args)


def test_fallback_budget_is_honoured(outlier_files: dict[str, Path], tmp_path: Path) -> None:
    ok = _convert_cli(outlier_files, tmp_path / "ok")
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    fb = report["fallback"]
    assert fb["passed"] and [e["op"] for e in fb["float_layers"]] == ["FULLY_CONNECTED"]
    kept = fb["float_layers"][0]
    assert kept["gain"] > 0 and 0 < kept["size_cost"] <= 0.10
    assert fb["frontier"][0]["float_layers"] == 0 and fb["frontier"][-1]["passed"]
    assert "Float fallback frontier" in ok.output and "layers in float" in ok.output
    none = _convert_cli(outlier_files, tmp_path / "none", "--fallback-budget", "0.001")
    assert none.exit_code == 1
    reason = none.output.strip().splitlines()[-1]
    assert "cannot be met within the float-fallback budget" in reason, none.output
    assert not (tmp_path / "none" / "model.tflite").exists()
    forced = _convert_cli(
        outlier_files, tmp_path / "forced", "--fallback-budget", "0.001", "--force"
    )
    assert forced.exit_code == 0, forced.output
    m = load_bundle(tmp_path / "forced").manifest
    assert (
        m.gates["passed"] is False and m.gates["forced"] is True and "accuracy" in m.gates["failed"]
    )
    assert m.metrics["quantization"] == "int8"  # nothing fits 0.1%: no float layer, named so
    bad = _convert_cli(outlier_files, tmp_path / "bad", "--fallback-budget", "0.1,0.2,0.3")
    assert bad.exit_code == 2 and "--fallback-budget" in bad.output


def test_labelled_validation_gates_on_label_accuracy(
    outlier_files: dict[str, Path], tmp_path: Path
) -> None:
    for val, metric in (("val", "top1_accuracy"), ("plain", "top1_agreement")):
        run = _convert_cli(outlier_files, tmp_path / val, "--no-fallback", "--force", val=val)
        assert run.exit_code == 0, run.output
        acc = load_bundle(tmp_path / val).manifest.metrics["accuracy"]
        assert acc["metric"] == metric
        report = json.loads((tmp_path / val / "report.json").read_text())["accuracy_detail"]
        n = report["samples"]
        lo, hi = report["ci95"]["top1_agreement"]
        assert lo <= report["top1_agreement"] <= hi and report["kl_divergence"] > 0
        if metric == "top1_accuracy":
            assert acc["drop"] == pytest.approx(
                report["float_top1_accuracy"] - report["quant_top1_accuracy"]
            )
            q = report["quant_top1_accuracy"]
            assert report["ci95"]["quant"] == pytest.approx(list(wilson(round(q * n), n)), abs=1e-4)
        else:
            assert acc["drop"] == pytest.approx(1 - report["top1_agreement"])


def test_wilson_interval() -> None:
    lo, hi = wilson(99, 100)
    assert 0.94 < lo < 0.96 and 0.99 < hi <= 1.0
    assert wilson(0, 0) == (0.0, 1.0)
