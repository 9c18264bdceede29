"""Activation ranges refined to the least int8 error (converter.activation_ranges)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from convert_kit import convert_tensor

from converter.activation_ranges import BINS, best_range


def _hist(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.histogram(np.clip(values, lo, hi), bins=BINS, range=(lo, hi))[0].astype(float)


def _int8_mse(values: np.ndarray, low: float, high: float) -> float:
    step = (high - low) / 255.0
    q = np.clip(np.round((values - low) / step), 0, 255) * step + low
    return float(np.mean((q - values) ** 2))


def test_a_long_tail_is_clipped_and_a_flat_range_kept() -> None:
    rng = np.random.default_rng(0)
    tail = np.concatenate([rng.exponential(1.0, 200_000), -rng.exponential(0.1, 2_000)])
    lo, hi = float(tail.min()), float(tail.max())
    low, high = best_range(_hist(tail, lo, hi), lo, hi)
    assert lo < low < 0.0 < high < hi  # both tails clipped
    assert _int8_mse(tail, low, high) < 0.9 * _int8_mse(tail, lo, hi)
    flat = rng.uniform(-3.0, 5.0, 100_000)
    assert best_range(_hist(flat, -3.0, 5.0), -3.0, 5.0) == pytest.approx((-3.0, 5.0))


def _power_model(spiky: bool) -> Any:
    """1x1 conv, the square of its output, 1x1 conv. Squares of a roughly Gaussian value have a
    long tail, so their min/max range spends most int8 steps on a few values. With `spiky`, one
    squared channel is large and barely used by the last conv: its rare peaks set the range that
    the seven channels the output depends on share."""
    import keras

    keras.utils.set_random_seed(7)
    inp = keras.Input((16, 16, 3), name="image")
    mix = keras.layers.Conv2D(8, 1, name="mix")
    h = mix(inp)
    sq = keras.layers.Multiply(name="square")([h, h])
    out = keras.layers.Conv2D(4, 1, name="out")
    model = keras.Model(inp, out(sq), name="power")
    if spiky:
        w, b = mix.get_weights()
        w[..., 0], w[..., 1:] = 1.0, w[..., 1:] * 0.3
        mix.set_weights([w, b])
        w, b = out.get_weights()
        w[:, :, 0, :] *= 0.01
        out.set_weights([w, b])
    return model


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, 16, 16, 3)).astype(np.float32)


@pytest.mark.parametrize("spiky", [True, False])
def test_refined_ranges_are_kept_only_where_they_bring_int8_closer(
    spiky: bool, tmp_path: Path
) -> None:
    pytest.importorskip("tensorflow")
    model = _power_model(spiky)
    calib, val = _images(100, 1), _images(100, 2)
    want = np.asarray(model.predict(val, verbose=0))
    errors, records = {}, {}
    for ranges in ("minmax", "mse"):
        result, got = convert_tensor(model, calib, val, tmp_path / ranges, activation_ranges=ranges)
        errors[ranges] = float(np.sqrt(np.mean((got - want) ** 2)))
        records[ranges] = result.manifest.metrics.get("activation_ranges")
    assert records["minmax"] is None
    rec = records["mse"]
    assert rec["narrowed"] >= 1 and rec["median_width"] < 1.0
    err = rec["output_error"]
    assert rec["method"] == ("mse" if err["mse"] < err["minmax"] else "minmax")
    if spiky:  # the shared range narrows, and the held-out error with it
        assert rec["method"] == "mse" and errors["mse"] < errors["minmax"], errors
    else:  # clipping the tail errs more than it saves: min/max kept, the same model
        assert rec["method"] == "minmax" and errors["mse"] == errors["minmax"]
