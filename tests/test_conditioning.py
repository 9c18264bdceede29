"""Conditioning a Keras model for int8 (converter.conditioning): cross-layer equalization and bias
correction, on small real models converted and run in LiteRT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from convert_kit import convert_tensor

pytest.importorskip("tensorflow")


def _separable_net() -> Any:
    """conv -> BN -> ReLU -> separable -> BN -> ReLU -> separable -> pooled dense. The BN scales
    span three decades, so the int8 tensors after them (one scale for all channels) leave most
    channels a few levels, and the depthwise kernels are spread as widely."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    h = keras.layers.BatchNormalization(name="bn0")(h)
    h = keras.layers.ReLU(name="relu0")(h)
    h = keras.layers.SeparableConv2D(8, 3, padding="same", use_bias=False, name="sep1")(h)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(5, name="logits")(h), name="sepnet")
    spread = np.logspace(-2, 1, 8).astype(np.float32)
    for name in ("bn0", "bn1"):
        bn = model.get_layer(name)
        gamma, beta, mean, var = bn.get_weights()
        bn.set_weights([gamma * spread[::-1], beta * spread, mean, var])
    sep = model.get_layer("sep2")
    dw, pw, b = sep.get_weights()
    sep.set_weights([dw * spread[None, None, :, None], pw, b])
    return model


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, 12, 12, 3)).astype(np.float32)


def test_equalization_is_exact_in_float_and_evens_out_the_ranges() -> None:
    from converter.equalization import equalize

    model, x = _separable_net(), _images(64, 1)
    same, report = equalize(model, x)
    assert same is not model
    assert report.tensors == ["sep1", "sep1 (depthwise)", "sep2", "sep2 (depthwise)"]
    want = np.asarray(model.predict(x, verbose=0))
    got = np.asarray(same.predict(x, verbose=0))
    assert np.max(np.abs(got - want)) <= 1e-5 * max(1.0, float(np.max(np.abs(want))))
    assert all(a < b for a, b in zip(report.spread_after, report.spread_before, strict=True))
    gamma = model.get_layer("bn0").get_weights()[0]
    assert np.allclose(gamma, 0.1 * np.logspace(1, -2, 8) * 10)  # the original is untouched
    assert not np.allclose(same.get_layer("bn0").get_weights()[0], gamma)


def test_relu6_and_shared_tensors_are_left_alone() -> None:
    import keras

    from converter.equalization import equalize

    inp = keras.Input((8, 8, 2))
    a = keras.layers.Conv2D(4, 1, name="a")(inp)
    r6 = keras.layers.ReLU(max_value=6.0)(a)
    b = keras.layers.Conv2D(4, 1, name="b")(r6)  # after a clip: not homogeneous
    c = keras.layers.Conv2D(4, 1, name="c")(b)  # b's output also goes to the add: two readers
    model = keras.Model(inp, keras.layers.Add()([b, c]))
    same, report = equalize(model, _images(8, 2)[..., :2][:, :8, :8])
    assert same is model and report.tensors == []


def _convert(model: Any, out: Path, conditioning: str, offset: float = 0.0) -> tuple[Any, float]:
    val = _images(100, 5) + offset
    calib = _images(100, 4) + offset
    result, got = convert_tensor(model, calib, val, out / conditioning, conditioning=conditioning)
    want = np.asarray(model.predict(val, verbose=0))
    return result, float(np.sqrt(np.mean((got - want) ** 2)) / np.std(want))


def test_equalized_int8_model_is_closer_to_float(tmp_path: Path) -> None:
    model = _separable_net()
    off, plain_error = _convert(model, tmp_path, "off")
    assert "conditioning" not in off.manifest.metrics
    on, error = _convert(model, tmp_path, "on")
    record = on.manifest.metrics["conditioning"]
    assert record["kept"] and record["equalization"]["tensors"] == 4
    assert record["bias_correction"]["layers"] == 4  # stem, sep1, sep2, logits
    assert error < 0.7 * plain_error, (error, plain_error)
    assert on.manifest.metrics["accuracy"]["drop"] < off.manifest.metrics["accuracy"]["drop"]


def _biased_net() -> Any:
    """A depthwise conv whose 3x3 kernels round up in int8: one weight per channel sets the scale
    (1/127 a step) and the other eight sit at 0.6 of a step, so each gains 0.4 of a step, a shift
    of the output mean on inputs with a positive mean, then a 1x1 conv."""
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((12, 12, 3), name="image")
    dw = keras.layers.DepthwiseConv2D(3, padding="valid", name="dw")
    h = dw(inp)
    out = keras.layers.Conv2D(4, 1, name="mix")(h)
    model = keras.Model(inp, out, name="biased")
    k = np.full((3, 3, 3, 1), 0.6 / 127, np.float32)
    k[1, 1] = 1.0
    dw.set_weights([k, np.zeros(3, np.float32)])
    return model


def test_bias_correction_takes_out_the_int8_weight_shift(tmp_path: Path) -> None:
    from converter.bias_correction import correct_biases, int8_weights

    model = _biased_net()
    k = model.get_layer("dw").get_weights()[0]
    assert np.allclose(int8_weights(k, depthwise=True)[0, 0], 1.0 / 127)
    x = _images(64, 4) + 3.0
    corrected, report = correct_biases(model, x)
    assert report.layers == ["dw", "mix"]
    shift = corrected.get_layer("dw").get_weights()[1]
    assert np.allclose(shift, -8 * 0.4 / 127 * 3.0, rtol=0.05), shift  # 8 weights, mean input 3


def test_bias_corrected_int8_model_is_closer_to_float(tmp_path: Path) -> None:
    net = _biased_net()
    _, plain_error = _convert(net, tmp_path, "off", offset=3.0)
    on, error = _convert(net, tmp_path, "on", offset=3.0)
    record = on.manifest.metrics["conditioning"]
    assert record["kept"] and record["bias_correction"]["layers"] == 2
    assert error < 0.7 * plain_error, (error, plain_error)
    passed, _ = _convert(net, tmp_path, "auto")  # zero-mean inputs: no shift, the gate passes
    assert passed.passed and "conditioning" not in passed.manifest.metrics


def test_cli_conditioning_option(tmp_path: Path) -> None:
    from converter.cli import cli

    _separable_net().save(tmp_path / "sep.keras")
    np.save(tmp_path / "calib.npy", _images(40, 6))
    args = ["convert", str(tmp_path / "sep.keras"), "--profile", "x86-avx2", "--task", "tensor",
            "--calibration", str(tmp_path / "calib.npy"), "--latency-runs", "3", "--force"]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "on")])
    assert result.exit_code == 0, result.output  # auto: pure int8 misses the accuracy gate
    assert "conditioning: 4 int8 tensor(s) equalized" in result.output
    report = json.loads((tmp_path / "on" / "report.json").read_text())
    assert report["metrics"]["conditioning"]["equalization"]["tensors"] == 4
    off = CliRunner().invoke(cli, [*args, "--conditioning", "off", "--output", str(tmp_path / "o")])
    assert off.exit_code == 0, off.output
    assert "conditioning" not in json.loads((tmp_path / "o" / "report.json").read_text())["metrics"]
    bad = CliRunner().invoke(cli, [*args, "--conditioning", "always", "--output", str(tmp_path)])
    assert bad.exit_code == 2 and "'always' is not one of" in bad.output
