"""`edgegap convert` on a subclassed Keras model saved as .keras without a registration package:
--custom-objects registers its classes under their bare names, --input-shape gives it an input."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")

from agent.bundle.loading import load_bundle  # noqa: E402
from agent.runtime import open_model  # noqa: E402
from converter.cli import cli  # noqa: E402

SHAPE = (16, 16, 3)

# Neither class is registered: the .keras archive names them only by their bare class names.
LAYERS_PY = """
import keras


class Block(keras.layers.Layer):
    def __init__(self, filters=4, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")

    def call(self, x):
        return self.conv(x)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


class TinyNet(keras.Model):
    def __init__(self, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.block = Block(4)
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(classes, activation="softmax")

    def call(self, x):
        return self.head(self.pool(self.block(x)))

    def get_config(self):
        return {"classes": self.classes, "name": self.name}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("subclassed")
    layers = root / "user_layers.py"
    layers.write_text(LAYERS_PY)
    spec = importlib.util.spec_from_file_location("user_layers_at_save", layers)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not left in sys.modules: Keras cannot find it by itself
    model = module.TinyNet(3)
    x = np.random.default_rng(0).random((40, *SHAPE), dtype=np.float32)
    model(x[:1])
    model.save(root / "tiny_sub.keras")
    np.save(root / "calib.npy", x)
    return {"root": root, "layers": layers, "x": root / "calib.npy"}


def run(files: dict[str, Path], *extra: str, out: str = "bundle") -> Result:
    root = files["root"]
    args = ["convert", str(root / "tiny_sub.keras"), "--profile", "x86-avx2",
            "--calibration", str(files["x"]), "--latency-runs", "3", "--force",
            "--output", str(root / out), *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def error_line(res: Result) -> str:
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def test_without_custom_objects_the_classes_are_unknown(files: dict[str, Path]) -> None:
    line = error_line(run(files, "--input-shape", "16,16,3", out="none"))
    assert "TinyNet" in line and "--custom-objects" in line


def test_without_input_shape_the_error_asks_for_it(files: dict[str, Path]) -> None:
    line = error_line(run(files, "--custom-objects", str(files["layers"]), out="noshape"))
    assert "--input-shape" in line


def test_bad_input_shape_is_one_line(files: dict[str, Path]) -> None:
    line = error_line(run(files, "--input-shape", "16,x,3", out="bad"))
    assert "--input-shape" in line and "96,96,3" in line


def test_subclassed_model_converts_and_runs(files: dict[str, Path]) -> None:
    res = run(files, "--custom-objects", str(files["layers"]), "--input-shape", "16,16,3")
    assert res.exit_code == 0, res.output
    bundle = load_bundle(files["root"] / "bundle")
    m = bundle.manifest
    assert m.input.shape == [1, *SHAPE] and m.input.dtype == "int8"
    assert m.task == "classification" and m.outputs[0].shape == [1, 3]
    model = open_model(bundle.model_bytes())
    x = np.load(files["x"])[:1]
    info = model.inputs[0]
    q = np.clip(np.rint(x / info.scale + info.zero_point), -128, 127).astype(np.int8)
    (out,) = model.run(q)
    assert out.shape == (1, 3)
    assert "user_layers_at_save" not in sys.modules
