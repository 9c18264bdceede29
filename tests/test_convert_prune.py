"""`edgegap convert --prune`: the profile's pruning target applied before quantizing, end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")

from keras_models import pattern_data  # noqa: E402

from agent.bundle.loading import load_bundle  # noqa: E402
from agent.runtime import open_model  # noqa: E402
from converter.cli import cli  # noqa: E402
from firmware_profiles import PROFILE_DIR  # noqa: E402


def _wide_classifier(x: np.ndarray, y: np.ndarray) -> Any:
    import keras

    keras.utils.set_random_seed(7)
    inp = keras.Input(x.shape[1:], name="image")
    h = keras.layers.Conv2D(32, 3, padding="same", name="conv1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(int(y.max()) + 1, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x.astype(np.float32) / 255.0, y, epochs=15, batch_size=32, verbose=0)
    return model


def _profile_file(path: Path, pruning: dict[str, Any]) -> None:
    """The x86-avx2 profile with another pruning target, written to path (named by its stem)."""
    profile = yaml.safe_load((PROFILE_DIR / "x86-avx2.yaml").read_text())
    profile.update(name=path.stem, pruning=pruning)
    path.write_text(yaml.safe_dump(profile))


def test_convert_prune_removes_channels_and_reports(tmp_path: Path) -> None:
    """Pruning, with the BGR swap folded in too: the fold comes first and pruning keeps it."""
    x, y = pattern_data(160, seed=3, classes=3)
    _wide_classifier(x[:100], y[:100]).save(tmp_path / "wide.keras")
    np.save(tmp_path / "calib.npy", x[:100])
    np.savez(tmp_path / "val.npz", x=x[100:], y=y[100:])
    _profile_file(tmp_path / "half.yaml", pruning={"channels": 0.5, "min_channels": 4})

    result = CliRunner().invoke(
        cli,
        [
            str(a)
            for a in (
                "convert",
                tmp_path / "wide.keras",
                "--profile",
                tmp_path / "half.yaml",
                "--calibration",
                tmp_path / "calib.npy",
                "--validation",
                tmp_path / "val.npz",
                "--prune",
                "--prune-epochs",
                "2",
                "--latency-runs",
                "5",
                "--fold-bgr",
                "--force",
                "--output",
                tmp_path / "bundle",
            )
        ],
    )
    assert result.exit_code == 0, result.output
    title = re.search(r"Pruning: ([\d.]+)% of prunable channels removed \(50% asked", result.output)
    assert title is not None, result.output
    assert 40 < float(title.group(1)) < 50  # the logits layer is kept whole

    bundle = load_bundle(tmp_path / "bundle")
    pruning = bundle.manifest.metrics["pruning"]
    assert pruning["target"] == "channels"
    assert pruning["params_pruned"] < pruning["params_original"]
    # conv2 dominates the MACs and loses half its inputs and outputs: about a quarter remains.
    assert pruning["macs_ratio"] < 0.5
    assert "pruning" in json.dumps(json.loads((tmp_path / "bundle" / "report.json").read_text()))

    # The pruned bundle really has narrower convolutions: the first conv kernel has 16 filters.
    model = open_model(bundle.model_path)
    shapes = [tuple(int(v) for v in d["shape"]) for d in model._interp.get_tensor_details()]
    assert (16, 3, 3, 3) in shapes and (32, 3, 3, 3) not in shapes
    probs = model.run(np.zeros(bundle.manifest.input.shape, np.int8))[0]
    assert probs.shape == (1, 3)
    # Folded before pruning (tests/test_color_fold.py checks that the two commute).
    assert bundle.manifest.input.color_order.value == "bgr" and bundle.manifest.metrics[
        "bgr_folded_into"
    ] == ["conv1"]


def test_convert_prune_refuses_a_budget_out_of_reach(tmp_path: Path) -> None:
    """A MAC budget no pruning can meet is a one-line error before any fine-tune; no bundle."""
    x, y = pattern_data(60, seed=4, classes=3)
    _wide_classifier(x, y).save(tmp_path / "wide.keras")
    np.save(tmp_path / "calib.npy", x)
    _profile_file(tmp_path / "tiny.yaml", pruning={"macs": 1000, "min_channels": 4})

    result = CliRunner().invoke(
        cli,
        [
            str(a)
            for a in (
                "convert",
                tmp_path / "wide.keras",
                "--profile",
                tmp_path / "tiny.yaml",
                "--calibration",
                tmp_path / "calib.npy",
                "--prune",
                "--prune-epochs",
                "2",
                "--force",
                "--output",
                tmp_path / "bundle",
            )
        ],
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert re.search(
        r"MAC budget 1,000 is out of pruning's reach: with 95% of channels removed", result.output
    )
    assert not (tmp_path / "bundle" / "manifest.json").exists()
