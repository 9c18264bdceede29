"""`edgegap models rollback` and `rebuild` on a tiny registry: 8x8 classifiers converted by the
real pipeline (with their recipes kept as a refresh keeps them), a real mosquitto, and a real
agent that activates a rollback from its store without downloading it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import Broker
from publish_kit import retained
from test_detector import one_line_error

pytest.importorskip("tensorflow")

from agent.bundle.loading import MODEL_FILE, read_manifest  # noqa: E402
from agent.bundle.signing import generate_keypair, load_public_key, verify_manifest  # noqa: E402
from agent.updates.protocol import Limits, parse_release  # noqa: E402
from converter.options import ConvertOptions  # noqa: E402
from converter.refresh import recipe  # noqa: E402
from converter.refresh.registry import Registry, Version, now  # noqa: E402
from firmware_profiles import load_profile  # noqa: E402

RELEASE = "edgegap/default/models/lab/manifest"


def run(*args: Any) -> Result:
    from converter.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


@cache
def trained(seed: int, folder: Path) -> Path:
    """A tiny classifier trained with seed, saved under folder (once per seed)."""
    from keras_models import pattern_data, trained_classifier

    x, y = pattern_data(100, seed=4, classes=3)
    model = folder / f"model{seed}.keras"
    trained_classifier(x[:60], y[:60], seed=seed).save(model)
    return model


def add_version(
    reg: Registry, root: Path, version: int, seed: int, bundle: bool = True, **record: Any
) -> Version:
    """trained(seed) converted, signed, and added with its recipe, as a refresh adds one."""
    from keras_models import pattern_data

    from converter.pipeline import convert

    x, y = pattern_data(100, seed=4, classes=3)
    data = root / f"data{version}"
    data.mkdir()
    np.savez(data / "calibration.npz", x=x[:60])
    np.savez(data / "validation.npz", x=x[60:], y=y[60:])
    model = trained(seed, root)
    opts = ConvertOptions(
        model=model, profile=load_profile("x86-avx2"), calibration=data / "calibration.npz",
        validation=data / "validation.npz", output=data / "bundle", name="tiny",
        version=version, labels=["r", "g", "b"], sign_key=root / "keys" / "edgegap.key",
        latency_runs=5, force=True,
    )  # fmt: skip
    if bundle:
        convert(opts)
    entry = Version(version, record.pop("parent", None), now(), record.pop("status", "published"),
                    "", conversion=recipe.keep(reg, version, opts), **record)  # fmt: skip
    return reg.add(entry, model, data / "bundle" if bundle else None)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """v1 published, v2 published (another model), v3 rejected, v4 without a bundle."""
    root = tmp_path_factory.mktemp("models")
    generate_keypair(root / "keys")
    reg = Registry(root / "registry")
    add_version(reg, root, 1, seed=2)
    add_version(reg, root, 2, seed=3, parent=1)
    failed = [{"name": "accuracy", "status": "fail"}]
    add_version(reg, root, 3, seed=3, parent=2, status="rejected", gates=failed)
    add_version(reg, root, 4, seed=3, parent=2, bundle=False)
    return reg


def keys(reg: Registry) -> tuple[Path, Path]:
    folder = reg.root.parent / "keys"
    return folder / "edgegap.key", folder / "edgegap.pub"


def rollback(reg: Registry, version: int, url: str, *extra: Any) -> Result:
    return run("models", "rollback", version, "--channel", "lab", "--broker", url,
               "--registry", reg.root, *extra)  # fmt: skip


def test_rollback_reissues_the_stored_model_above_the_channel(
    registry: Registry, mosquitto: Broker
) -> None:
    key, pub = keys(registry)
    v2 = registry.bundle(2)
    assert v2 is not None
    published = run("publish", v2, "--channel", "lab", "--broker", mosquitto.url)
    assert published.exit_code == 0, published.output
    result = rollback(registry, 1, mosquitto.url, "--sign-key", key)
    assert result.exit_code == 0, result.output
    new = registry.versions()[-1]
    assert new.parent == 1 and new.training == {"rollback_of": 1} and new.status == "published"
    assert new.version > 4 and f"v1 -> v{new.version}" in result.output
    release = parse_release(retained(mosquitto.host, mosquitto.port, RELEASE)[RELEASE], Limits())
    stored = registry.bundle(1)
    assert stored is not None
    old = read_manifest(stored)
    assert release.manifest.version == new.version
    assert release.manifest.model.sha256 == old.model.sha256 == release.blob.sha256
    assert old.model.sha256[:16] in result.output
    verify_manifest(release.manifest, [load_public_key(pub)])
    again = registry.bundle(new.version)
    assert again is not None
    assert (again / MODEL_FILE).read_bytes() == (stored / MODEL_FILE).read_bytes()
    assert read_manifest(again).signature == release.manifest.signature
    listed = json.loads(run("models", "list", "--json", "--registry", registry.root).output)
    assert listed[-1]["version"] == new.version


def test_rollback_bad_input_is_one_line(
    registry: Registry, mosquitto: Broker, tmp_path: Path
) -> None:
    key, _ = keys(registry)
    before = [v.version for v in registry.versions()]
    url = mosquitto.url
    assert "version 9 is not in the registry" in one_line_error(
        rollback(registry, 9, url, "--sign-key", key)
    )
    assert "v4 has no int8 bundle" in one_line_error(rollback(registry, 4, url, "--sign-key", key))
    err = one_line_error(rollback(registry, 3, url, "--sign-key", key))
    assert "v3 was rejected (accuracy)" in err and "--force" in err
    assert "give --sign-key" in one_line_error(rollback(registry, 1, url))
    assert "key file not found" in one_line_error(
        rollback(registry, 1, url, "--sign-key", tmp_path / "none.key")
    )
    mosquitto.stop()
    assert "unreachable" in one_line_error(rollback(registry, 1, url, "--sign-key", key))
    assert [v.version for v in registry.versions()] == before  # nothing recorded


def test_a_canary_rollback_with_no_canary_online_is_recorded_not_published(
    registry: Registry, mosquitto: Broker
) -> None:
    key, _ = keys(registry)
    result = rollback(registry, 2, mosquitto.url, "--sign-key", key, "--stage", "canary")
    err = one_line_error(result)
    new = registry.versions()[-1]
    assert f"v2 -> v{new.version}" in err and "no canary device of channel lab" in err
    assert new.status == "not published" and new.training == {"rollback_of": 2}
    assert not retained(mosquitto.host, mosquitto.port, "edgegap/default/models/lab/#")


def test_rebuild_matches_the_stored_bundle(registry: Registry, tmp_path: Path) -> None:
    result = run("models", "rebuild", 2, "--registry", registry.root, "--output", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "matches" in result.output and "identical model" in result.output
    stored = registry.bundle(2)
    assert stored is not None
    rebuilt = read_manifest(tmp_path / "b")
    assert rebuilt.model.sha256 == read_manifest(stored).model.sha256 and rebuilt.version == 2


def test_rebuild_says_what_differs_and_what_it_cannot_rebuild(
    registry: Registry, tmp_path: Path
) -> None:
    # v3's calibration data replaced by black images: other int8 ranges, other outputs
    kept = registry.folder(3) / recipe.FOLDER / "calibration.npz"
    assert kept.stat().st_nlink >= 2  # a link to the registry's pool
    kept.unlink()  # a hard link: writing into it would change every version's data
    np.savez(kept, x=np.zeros((60, 8, 8, 3), np.uint8))
    err = one_line_error(
        run("models", "rebuild", 3, "--registry", registry.root, "--output", tmp_path / "b")
    )
    assert "does not match" in err and "golden outputs differ" in err
    old = registry.get(1)
    old.conversion = {}  # a record from before recipes were kept
    registry.save(old)
    err = one_line_error(
        run("models", "rebuild", 1, "--registry", registry.root, "--output", tmp_path / "c")
    )
    assert "recorded before conversion recipes were kept" in err


def test_an_agent_activates_a_rollback_from_its_store_without_downloading(
    mosquitto: Broker, tmp_path: Path
) -> None:
    from updates_kit import CHANNEL, Mqtt, agent_config, running_agent, served_version, variant

    from agent.bundle.signing import load_private_key

    key, pub = generate_keypair(tmp_path / "keys")
    reg = Registry(tmp_path / "registry")
    float_model = tmp_path / "float.keras"  # a rollback copies the float model, never reads it
    float_model.write_bytes(b"float model of the kit's bundles")
    for version, layout in ((1, "yolo"), (2, "ssd_postprocess")):
        bundle = variant(layout, version, tmp_path / f"v{version}", load_private_key(key))
        reg.add(Version(version, version - 1 or None, now(), "published", ""), float_model,
                bundle.path)  # fmt: skip
    kit = Mqtt(mosquitto)
    config = agent_config(mosquitto, tmp_path, **{"bundle.path": str(reg.bundle(1)),
                                                  "bundle.trusted_keys": [str(pub)]})  # fmt: skip
    fleet = ("--channel", CHANNEL, "--fleet", "test", "--broker", mosquitto.url)
    with running_agent(config) as agent:
        kit.wait_event("probation_passed", version=1)
        assert run("publish", reg.bundle(2), *fleet).exit_code == 0
        kit.wait_event("probation_passed", version=2)
        result = run("models", "rollback", 1, *fleet, "--sign-key", key, "--registry", reg.root)
        assert result.exit_code == 0, result.output
        new = reg.versions()[-1].version
        kit.wait_event("probation_passed", version=new)
        assert served_version(agent) == new
        assert agent.pipeline is not None
        stored = reg.bundle(1)
        assert stored is not None
        assert agent.pipeline.served.manifest.model.sha256 == read_manifest(stored).model.sha256
    kinds = [e["event"] for e in kit.events() if e.get("version") == new]
    assert kinds == ["available", "verified", "activating", "activated", "probation_passed"]
