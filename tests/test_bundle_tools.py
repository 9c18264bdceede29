"""`edgegap verify`, `inspect` and `bench` on a real converted bundle, and on broken copies of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

pytest.importorskip("tensorflow")

from keras_models import pattern_data, trained_classifier  # noqa: E402

from agent.bundle.loading import MANIFEST_FILE, MODEL_FILE  # noqa: E402
from agent.bundle.manifest import parse_manifest  # noqa: E402
from agent.bundle.signing import generate_keypair, load_private_key, sign_manifest  # noqa: E402
from converter.cli import cli  # noqa: E402
from converter.data import Dataset  # noqa: E402
from converter.pipeline import ConvertOptions, convert  # noqa: E402
from firmware_profiles import load_profile  # noqa: E402


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    x, y = pattern_data(100, seed=4, classes=3)
    model = trained_classifier(x[:60], y[:60])
    generate_keypair(root / "a")
    generate_keypair(root / "b")
    convert(
        ConvertOptions(
            model=model,
            profile=load_profile("x86-avx2"),
            calibration=Dataset(x[:60] / 255.0),
            validation=Dataset(x[60:].astype(np.float32) / 255.0),
            output=root / "bundle",
            name="tiny",
            version=1,
            labels=["r", "g", "b"],
            sign_key=root / "a" / "edgegap.key",
            latency_runs=5,
        )
    )
    return {
        "root": root,
        "bundle": root / "bundle",
        "key_a": root / "a" / "edgegap.pub",
        "key_b": root / "b" / "edgegap.pub",
    }


def run(*args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def edit_manifest(bundle: Path, change: Any) -> None:
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    change(data)
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))


def assert_fails(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_verify_passes_with_the_signing_key(signed: dict[str, Path]) -> None:
    result = run("verify", signed["bundle"], "--key", signed["key_a"])
    assert result.exit_code == 0, result.output
    for word in ("sha256", "signature", "golden", "verified"):
        assert word in result.output


def test_verify_without_key_checks_everything_but_the_signature(signed: dict[str, Path]) -> None:
    result = run("verify", signed["bundle"])
    assert result.exit_code == 0, result.output
    assert "not checked" in result.output and "signed by" in result.output


def test_tampered_model_fails_verify(signed: dict[str, Path], tmp_path: Path) -> None:
    bundle = copy(signed["bundle"], tmp_path / "b")
    data = bytearray((bundle / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / MODEL_FILE).write_bytes(bytes(data))
    assert_fails(run("verify", bundle, "--key", signed["key_a"]), "sha256", "tampered")


def test_manifest_signed_by_another_key_fails_verify(signed: dict[str, Path]) -> None:
    assert_fails(run("verify", signed["bundle"], "--key", signed["key_b"]), "not trusted")


def test_manifest_resigned_by_another_key_fails_verify(
    signed: dict[str, Path], tmp_path: Path
) -> None:
    bundle = copy(signed["bundle"], tmp_path / "b")
    manifest = parse_manifest((bundle / MANIFEST_FILE).read_bytes())
    other = sign_manifest(manifest, load_private_key(signed["root"] / "b" / "edgegap.key"))
    (bundle / MANIFEST_FILE).write_text(other.to_json())
    assert_fails(run("verify", bundle, "--key", signed["key_a"]), "not trusted")
    assert run("verify", bundle, "--key", signed["key_b"]).exit_code == 0


def test_altered_manifest_fails_the_signature(signed: dict[str, Path], tmp_path: Path) -> None:
    bundle = copy(signed["bundle"], tmp_path / "b")
    edit_manifest(bundle, lambda d: d.update(version=99))
    assert_fails(run("verify", bundle, "--key", signed["key_a"]), "altered")


def test_unsigned_bundle_fails_when_a_key_is_required(
    signed: dict[str, Path], tmp_path: Path
) -> None:
    bundle = copy(signed["bundle"], tmp_path / "b")
    edit_manifest(bundle, lambda d: d.pop("signature"))
    assert_fails(run("verify", bundle, "--key", signed["key_a"]), "not signed")


def test_wrong_normalization_fails_the_golden_check(
    signed: dict[str, Path], tmp_path: Path
) -> None:
    bundle = copy(signed["bundle"], tmp_path / "b")
    edit_manifest(bundle, lambda d: d["input"].update(mean=[127.0]))
    assert_fails(run("verify", bundle), "golden check failed")


def test_output_index_mismatch_fails_verify(signed: dict[str, Path], tmp_path: Path) -> None:
    bundle = copy(signed["bundle"], tmp_path / "b")
    edit_manifest(bundle, lambda d: d["outputs"][0].update(index=0))
    assert_fails(run("verify", bundle), "not a model output")


def test_missing_bundle(tmp_path: Path) -> None:
    assert_fails(run("verify", tmp_path / "nothing"), "bundle not found")
    assert_fails(run("inspect", tmp_path / "nothing"), "bundle not found")
    assert_fails(run("bench", tmp_path / "nothing"), "bundle not found")


def test_inspect_shows_manifest_tensors_and_ops(signed: dict[str, Path]) -> None:
    result = run("inspect", signed["bundle"])
    assert result.exit_code == 0, result.output
    for word in (
        "tiny",
        "x86-avx2",
        "Input",
        "Outputs",
        "probabilities",
        "Interpreter tensors",
        "CONV_2D",
        "FULLY_CONNECTED",
        "Metrics",
        "Gates",
        "ed25519",
    ):
        assert word in result.output, word


def test_bench_prints_percentiles(signed: dict[str, Path]) -> None:
    result = run("bench", signed["bundle"], "--runs", "30", "--warmup", "3", "--threads", "1")
    assert result.exit_code == 0, result.output
    for word in ("p50 ms", "p90 ms", "p99 ms", "litert"):
        assert word in result.output
    assert "host-measured" in result.output or "device-class host" in result.output
