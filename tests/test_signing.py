from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.bundle.loading import BundleError, load_bundle, write_bundle
from agent.bundle.manifest import (
    Decoder,
    InputSpec,
    Manifest,
    ModelFile,
    OutputRole,
    OutputSpec,
    parse_manifest,
)
from agent.bundle.signing import (
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_manifest,
)
from converter.cli import cli


def _manifest(model: bytes) -> Manifest:
    return Manifest(
        name="m",
        version=1,
        profile="x86-avx2",
        created="2026-01-01T00:00:00Z",
        task="classification",
        decoder=Decoder.CLASSIFICATION,
        model=ModelFile(sha256=hashlib.sha256(model).hexdigest(), size=len(model)),
        input=InputSpec(
            shape=[1, 8, 8, 1], dtype="int8", scale=0.004, zero_point=-128, mean=[0], std=[255]
        ),
        outputs=[
            OutputSpec(name="out", index=5, role=OutputRole.LOGITS, shape=[1, 3], dtype="int8")
        ],
        labels=["a", "b", "c"],
    )


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


def test_keypair_private_mode_0600(keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert load_public_key(pub) is not None


def test_sign_then_verify_roundtrip(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = b"\x1c\x00\x00\x00TFL3" + bytes(100)
    signed = sign_manifest(_manifest(model), load_private_key(keys[0]))
    bundle = write_bundle(tmp_path / "b", model, signed)
    again = load_bundle(bundle.path, [load_public_key(keys[1])])
    assert again.manifest == signed
    # The manifest on disk round-trips through its own parser.
    assert parse_manifest((bundle.path / "manifest.json").read_bytes()) == signed


def test_other_key_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    other_priv, _ = generate_keypair(tmp_path / "other")
    model = b"x" * 64
    bundle = write_bundle(
        tmp_path / "b", model, sign_manifest(_manifest(model), load_private_key(other_priv))
    )
    with pytest.raises(BundleError, match="not trusted"):
        load_bundle(bundle.path, [load_public_key(keys[1])])


def test_altered_manifest_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = b"x" * 64
    bundle = write_bundle(
        tmp_path / "b", model, sign_manifest(_manifest(model), load_private_key(keys[0]))
    )
    path = bundle.path / "manifest.json"
    data = json.loads(path.read_text())
    data["labels"] = ["evil", "b", "c"]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(bundle.path, [load_public_key(keys[1])])


def test_unsigned_refused_when_keys_configured(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = b"x" * 64
    bundle = write_bundle(tmp_path / "b", model, _manifest(model))
    load_bundle(bundle.path)  # no trusted keys: accepted
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(bundle.path, [load_public_key(keys[1])])


def test_tampered_model_refused(tmp_path: Path) -> None:
    model = b"x" * 64
    bundle = write_bundle(tmp_path / "b", model, _manifest(model))
    (bundle.path / "model.tflite").write_bytes(b"y" * 64)
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle.path)


def test_manifest_bounds() -> None:
    with pytest.raises(ValueError, match="byte limit"):
        parse_manifest(b" " * (2 << 20))
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_manifest(b"{nope")
    with pytest.raises(ValueError, match="format"):
        parse_manifest(json.dumps({"format": 99}))


def test_manifest_name_cannot_be_a_path() -> None:
    model = b"x" * 64
    data = _manifest(model).model_dump(mode="json")
    data["name"] = "../../etc/passwd"
    with pytest.raises(ValueError, match="name"):
        parse_manifest(json.dumps(data))


def test_keys_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["keys", "generate", "--out", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    assert "key id" in res.output
    res = runner.invoke(cli, ["keys", "generate", "--out", str(tmp_path / "k")])
    assert res.exit_code == 1
    assert "already exists" in res.output and "Traceback" not in res.output


TAMPERS = {
    "input spec": lambda m: m["input"].update(zero_point=m["input"]["zero_point"] + 1),
    "input mean": lambda m: m["input"].update(mean=[1.0]),
    "outputs": lambda m: m["outputs"][0].update(scale=m["outputs"][0]["scale"] * 2),
    "output index": lambda m: m["outputs"][0].update(index=m["outputs"][0]["index"] + 1),
    "decoder": lambda m: m.update(decoder="tensor"),
    "extra": lambda m: m.update(extra={**m.get("extra", {}), "iou_threshold": 0.99}),
    "golden expected": lambda m: m["golden"]["expected"][0].__setitem__(0, "AAAAAA=="),
    "golden tolerance": lambda m: m["golden"].update(atol=[1e9] * len(m["golden"]["atol"])),
    "labels": lambda m: m.update(labels=list(reversed(m["labels"]))),
    "metrics": lambda m: m.update(metrics={**m["metrics"], "accuracy_drop": 0.0}),
    "gates": lambda m: m.update(gates={"passed": True}),
    "version": lambda m: m.update(version=m["version"] + 1),
    "model sha256": lambda m: m["model"].update(sha256="0" * 64),
    "profile": lambda m: m.update(profile="raspberry-pi-4"),
    "name": lambda m: m.update(name="other"),
}


@pytest.mark.parametrize("field", sorted(TAMPERS))
def test_a_real_signed_bundle_refuses_each_tampered_field(field: str) -> None:
    pytest.importorskip("tensorflow")
    from publish_kit import converted, public_key

    from agent.bundle.signing import SignatureError, verify_manifest

    manifest = json.loads((converted() / "manifest.json").read_text())
    trusted = [load_public_key(public_key())]
    verify_manifest(parse_manifest(json.dumps(manifest)), trusted)  # the untouched one verifies
    before = json.dumps(manifest, sort_keys=True)
    TAMPERS[field](manifest)
    assert json.dumps(manifest, sort_keys=True) != before, f"the {field} change changed nothing"
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(parse_manifest(json.dumps(manifest)), trusted)
