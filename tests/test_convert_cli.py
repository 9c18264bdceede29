"""`edgegap convert` through click's CliRunner: a real conversion, and every bad input as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:keras"
)  # keras' own saving code

from keras_models import leaky_model, pattern_data, trained_classifier  # noqa: E402

from agent.bundle.loading import load_bundle  # noqa: E402
from agent.bundle.signing import generate_keypair, load_public_key  # noqa: E402
from converter.cli import cli  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    x, y = pattern_data(120, seed=2, classes=3)
    trained_classifier(x[:60], y[:60], mean=127.5, std=127.5).save(root / "tiny.keras")
    leaky_model().save(root / "leaky.keras")
    np.save(root / "calib.npy", x[:60])
    np.savez(root / "val.npz", x=x[60:], y=y[60:])
    np.save(root / "wrong.npy", x[:10, :6, :6])
    (root / "labels.txt").write_text("zero\none\ntwo\n")
    (root / "notes.keras").write_text("this is not a model\n")
    (root / "weights.bin").write_bytes(b"\x00" * 64)
    generate_keypair(root / "keys")
    return {"root": root}


def run(*args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result: Result, *needles: str) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def base_args(root: Path, model: str = "tiny.keras", out: str = "bundle") -> list[Any]:
    return [
        "convert",
        root / model,
        "--profile",
        "raspberry-pi-4",
        "--calibration",
        root / "calib.npy",
        "--latency-runs",
        "5",
        "--output",
        root / out,
    ]


def test_convert_writes_a_signed_bundle(files: dict[str, Path]) -> None:
    root = files["root"]
    result = run(
        *base_args(root),
        "--validation",
        root / "val.npz",
        "--labels",
        root / "labels.txt",
        "--sign-key",
        root / "keys" / "edgegap.key",
        "--name",
        "tiny-cls",
        "--version",
        "7",
        "--mean",
        "127.5",
        "--std",
        "127.5",
    )
    assert result.exit_code == 0, result.output
    assert (
        "size" in result.output
        and "top1 accuracy" in result.output  # val.npz has labels: gated on them
        and "top-1 agreement" in result.output
        and "Gates" in result.output
    )
    bundle = load_bundle(root / "bundle", [load_public_key(root / "keys" / "edgegap.pub")])
    m = bundle.manifest
    assert (m.name, m.version, m.profile, m.labels) == (
        "tiny-cls",
        7,
        "raspberry-pi-4",
        ["zero", "one", "two"],
    )
    # --mean 127.5 is folded into the model (--pixel-exact auto): the device feeds pixel - 128
    assert m.input.mean == [128.0] * 3 and m.input.std == [1.0] * 3 and m.input.dtype == "int8"
    assert (m.input.scale, m.input.zero_point) == (1.0, 0)
    assert m.metrics["pixel_input"]["normalization_folded"] == {
        "mean": [127.5] * 3,
        "std": [127.5] * 3,
    }
    assert m.signature is not None and m.golden is not None and m.golden.count == 3
    assert m.metrics["accuracy"]["data"] == "validation" and m.metrics["accuracy"]["samples"] == 60
    report = json.loads((root / "bundle" / "report.json").read_text())
    assert report["passed"] is True and report["model"]["sha256"] == m.model.sha256
    verify = run("verify", root / "bundle", "--key", root / "keys" / "edgegap.pub")
    assert verify.exit_code == 0 and "verified" in verify.output


def test_missing_model_file(files: dict[str, Path]) -> None:
    assert_one_line_error(
        run(*base_args(files["root"], "nope.keras")), "model not found", "nope.keras"
    )


@pytest.mark.parametrize("name", ["notes.keras", "weights.bin"])
def test_file_that_is_not_a_model(files: dict[str, Path], name: str) -> None:
    assert_one_line_error(run(*base_args(files["root"], name)), "not a model", name)


def test_unknown_profile(files: dict[str, Path]) -> None:
    root = files["root"]
    args = base_args(root)
    args[args.index("raspberry-pi-4")] = "toaster-9000"
    assert_one_line_error(run(*args), "unknown profile 'toaster-9000'", "raspberry-pi-4")


def test_calibration_data_of_the_wrong_shape(files: dict[str, Path]) -> None:
    root = files["root"]
    args = base_args(root)
    args[args.index(root / "calib.npy")] = root / "wrong.npy"
    assert_one_line_error(run(*args), "wrong.npy", "(6, 6, 3)", "(8, 8, 3)")


def test_labels_that_do_not_fit(files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "two.txt").write_text("a\nb\n")
    assert_one_line_error(
        run(*base_args(files["root"], out="x"), "--labels", tmp_path / "two.txt"),
        "2 labels",
        "3 classes",
    )


def test_op_outside_coral_allowlist_fails_then_force_writes(files: dict[str, Path]) -> None:
    root = files["root"]
    args = base_args(root, "leaky.keras", "coral")
    args[args.index("raspberry-pi-4")] = "coral-edgetpu"
    line = assert_one_line_error(run(*args), "gate ops failed", "LEAKY_RELU", "coral-edgetpu")
    assert "--force" in line
    assert not (root / "coral" / "model.tflite").exists()
    forced = run(*args, "--force")
    assert forced.exit_code == 0, forced.output
    m = load_bundle(root / "coral").manifest
    assert m.gates["passed"] is False and m.gates["failed"] == ["ops"] and m.input.dtype == "uint8"


def _answers(bundle_dir: Path, frames: np.ndarray) -> np.ndarray:
    """Dequantized outputs of a bundle on BGR frames, prepared by the agent's own preprocessing."""
    from agent.preprocess import Preprocessor, dequantize
    from agent.runtime import open_model

    bundle = load_bundle(bundle_dir)
    model, pre, out = (
        open_model(bundle.model_bytes(), 1),
        Preprocessor(bundle.manifest.input),
        bundle.manifest.outputs[0],
    )
    rows = []
    for frame in frames:
        model.write_input(lambda buf, f=frame: pre(f, buf))
        model.invoke()
        rows.append(dequantize(model.get(out.index), out.scale, out.zero_point)[0])
    return np.stack(rows)


def test_fold_bgr_bundle_answers_bgr_frames_as_the_rgb_bundle_does(files: dict[str, Path]) -> None:
    root = files["root"]
    norm = ["--mean", "110,127.5,140", "--std", "60,64,70", "--validation", root / "val.npz"]
    norm += ["--pixel-exact", "off"]  # the manifest keeps the normalization, reversed for BGR
    plain = run(*base_args(root, out="rgb"), *norm)
    folded = run(*base_args(root, out="bgr"), *norm, "--fold-bgr")
    assert plain.exit_code == 0, plain.output
    assert folded.exit_code == 0, folded.output
    assert "channel swap is folded into conv2d" in folded.output.replace("\n", " ")
    m = load_bundle(root / "bgr").manifest
    assert (m.input.color_order.value, m.input.mean, m.input.std) == (
        "bgr",
        [140.0, 127.5, 110.0],
        [70.0, 64.0, 60.0],
    )
    assert [name[:6] for name in m.metrics["bgr_folded_into"]] == [
        "conv2d"
    ]  # its only conv, however numbered
    frames = np.random.default_rng(4).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    want, got = _answers(root / "rgb", frames), _answers(root / "bgr", frames)
    step = load_bundle(root / "bgr").manifest.outputs[0].scale
    assert np.abs(got - want).max() <= 2 * step
    # The check can tell: the same frames with red and blue swapped give other answers.
    assert np.abs(_answers(root / "rgb", frames[..., ::-1].copy()) - want).max() > 4 * step


def test_fold_bgr_refuses_a_model_it_cannot_fold(files: dict[str, Path]) -> None:
    root = files["root"]
    assert_one_line_error(
        run(*base_args(root, out="x"), "--fold-bgr", "--color-order", "bgr"), "takes bgr"
    )


def test_help_is_fast_and_does_not_import_tensorflow() -> None:
    code = "import sys, converter.cli; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = run("convert", "--help")
    assert result.exit_code == 0 and "Examples:" in result.output
