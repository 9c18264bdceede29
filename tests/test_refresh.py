"""The refresh loop on a tiny scale: domain b, relabel, refresh with its gates against a real
mosquitto, the registry, and one-line errors for bad input.

The student is the committed reference detector; captures, holdouts and epochs are few. The
profile's accuracy-drop budget is widened to 10 points here: 32 captures in two epochs forget
more of the old domain than the benchmark's run (benchmarks/refresh.py) does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result
from publish_kit import retained
from test_detector import one_line_error

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")

from agent.updates.protocol import Limits, parse_release  # noqa: E402
from converter.refresh.captures import shuffle_labels  # noqa: E402
from converter.tasks.detection_folder import ANNOTATIONS_FILE  # noqa: E402
from converter.zoo import detection_data as dd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "converter" / "zoo" / "weights" / "detector.keras"
PROFILE = ROOT / "firmware_profiles" / "x86-avx2.yaml"
SIZE = 224
CAPTURES, HOLDOUT = 32, 32


def run(*args: Any) -> Result:
    from converter.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def captures(out: Path, count: int, start: int = 0) -> Path:
    """Domain b frames as a device would send them: images, no annotations."""
    dd.write_folder(out, list(dd.generate("train", count, size=SIZE, start=start, domain="b")))
    (out / ANNOTATIONS_FILE).unlink()
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refresh")
    holdout, old = root / "holdout", root / "old"
    dd.write_folder(holdout, list(dd.generate("test", HOLDOUT, size=SIZE, domain="b")))
    dd.write_folder(old, list(dd.generate("test", HOLDOUT, size=SIZE)))
    profile = yaml.safe_load(PROFILE.read_text())
    profile["budgets"]["max_accuracy_drop"] = 0.10
    (root / "profile.yaml").write_text(yaml.safe_dump(profile))
    assert run("keys", "generate", "--out", root / "keys").exit_code == 0
    return {"root": root, "holdout": holdout, "old": old, "profile": root / "profile.yaml",
            "key": root / "keys" / "edgegap.key"}  # fmt: skip


def test_domain_b_is_deterministic_and_domain_a_unchanged() -> None:
    a = dd.make_sample("test", 0, size=SIZE)
    # domain a's pixels as they were before domain b existed: the committed weights' data
    assert hashlib.sha256(a.image.tobytes()).hexdigest().startswith("3a56c6a35785")
    b1, b2 = (
        dd.make_sample("test", 0, size=SIZE, domain="b"),
        dd.make_sample("test", 0, size=SIZE, domain="b"),
    )
    assert np.array_equal(b1.image, b2.image) and np.array_equal(b1.boxes, b2.boxes)
    assert b1.image.mean() < 0.6 * a.image.mean()  # low light
    r, g, b = b1.image.reshape(-1, 3).mean(axis=0)
    assert r > g > b  # the sodium-vapour cast
    with pytest.raises(ValueError, match="unknown domain"):
        dd.make_sample("test", 0, domain="c")


def test_make_dataset_domain_b(tmp_path: Path) -> None:
    result = run(
        "zoo",
        "make-dataset",
        "--output",
        tmp_path / "b",
        "--count",
        3,
        "--size",
        64,
        "--domain",
        "b",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "b" / ANNOTATIONS_FILE).read_text())
    assert doc["info"]["domain"] == "b" and len(doc["images"]) == 3


def test_relabel_labels_captures_and_keeps_reviewed_images(tmp_path: Path) -> None:
    folder = captures(tmp_path / "cap", 8)
    result = run("relabel", folder, "--teacher", WEIGHTS)
    assert result.exit_code == 0, result.output
    doc = json.loads((folder / ANNOTATIONS_FILE).read_text())
    assert [c["name"] for c in doc["categories"]] == list(dd.CLASSES)
    assert all(e["label"]["status"] in ("confident", "review") for e in doc["images"])
    confident = [a for a in doc["annotations"] if not a["iscrowd"]]
    assert confident and all(a["score"] >= 0.5 for a in confident)
    assert all(0.3 <= a["score"] < 0.5 for a in doc["annotations"] if a["iscrowd"])
    # a person reviews image 1: one box of their own; relabel must keep it
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 1]
    doc["annotations"].append({"id": 999, "image_id": 1, "category_id": 2, "bbox": [1, 2, 30, 40],
                               "area": 1200, "iscrowd": 0})  # fmt: skip
    doc["images"][0]["label"] = {"status": "reviewed"}
    (folder / ANNOTATIONS_FILE).write_text(json.dumps(doc))
    assert run("relabel", folder, "--teacher", WEIGHTS).exit_code == 0
    again = json.loads((folder / ANNOTATIONS_FILE).read_text())
    mine = [a for a in again["annotations"] if a["image_id"] == 1]
    assert [a["bbox"] for a in mine] == [[1, 2, 30, 40]] and again["images"][0]["label"][
        "status"
    ] == "reviewed"


def test_relabel_bad_input_is_one_line(tmp_path: Path) -> None:
    folder = captures(tmp_path / "cap", 2)
    assert "teacher model not found" in one_line_error(
        run("relabel", folder, "--teacher", tmp_path / "no.keras")
    )
    (tmp_path / "empty" / "images").mkdir(parents=True)
    assert "no captured images" in one_line_error(
        run("relabel", tmp_path / "empty", "--teacher", WEIGHTS)
    )


def _refresh(files: dict[str, Path], data: Path, student: Path, url: str, *extra: Any) -> Result:
    return run(
        "refresh", "--student", student, "--data", data, "--holdout", files["holdout"],
        "--old-holdout", files["old"], "--profile", files["profile"], "--channel", "lab",
        "--sign-key", files["key"], "--registry", files["root"] / "registry", "--broker", url,
        "--epochs", 2, "--learning-rate", 1e-3, "--replay-ratio", 1, "--stage", "stable",
        "--calibration-samples", 16, *extra,
    )  # fmt: skip


def test_refresh_bad_input_is_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    url = "mqtt://127.0.0.1:1"  # never reached: the input is checked first
    unlabelled = captures(tmp_path / "cap", 2)
    assert "no labelled captures" in one_line_error(_refresh(files, unlabelled, WEIGHTS, url))
    assert run("relabel", unlabelled, "--teacher", WEIGHTS).exit_code == 0
    nolabels = tmp_path / "nolabels"
    dd.write_folder(
        nolabels,
        [
            dd.Sample(
                np.zeros((32, 32, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int32)
            )
        ],
    )
    err = one_line_error(_refresh({**files, "holdout": nolabels}, unlabelled, WEIGHTS, url))
    assert "has no labels" in err
    assert "student model not found" in one_line_error(
        _refresh(files, unlabelled, tmp_path / "x.keras", url)
    )
    err = one_line_error(
        _refresh(files, unlabelled, WEIGHTS, url, "--teacher", tmp_path / "t.keras")
    )
    assert "teacher model not found" in err


def test_refresh_publishes_a_good_refresh_and_rejects_shuffled_labels(
    files: dict[str, Path], mosquitto: Any, tmp_path: Path
) -> None:
    good = captures(tmp_path / "good", CAPTURES)
    assert run("relabel", good, "--teacher", WEIGHTS).exit_code == 0
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    assert shuffle_labels(bad) > 0

    result = _refresh(files, good, WEIGHTS, mosquitto.url)
    assert result.exit_code == 0, result.output
    versions = json.loads(
        run("models", "list", "--json", "--registry", files["root"] / "registry").output
    )
    parent, refreshed = versions
    assert parent["status"] == "imported" and refreshed["parent"] == parent["version"]
    assert refreshed["status"] == "published"
    assert refreshed["accuracy"]["new"] > parent["accuracy"]["new"]
    assert {g["name"]: g["status"] for g in refreshed["gates"]}["new domain"] == "pass"
    topic = "edgegap/default/models/lab/manifest"
    release = parse_release(retained(mosquitto.host, mosquitto.port, topic)[topic], Limits())
    assert release.manifest.version == refreshed["version"]

    # the bad refresh starts from the same deployed student: its parent comes from the registry
    result = _refresh(files, bad, WEIGHTS, mosquitto.url)
    assert "rejected" in one_line_error(result)
    versions = json.loads(
        run("models", "list", "--json", "--registry", files["root"] / "registry").output
    )
    rejected = versions[-1]
    assert len(versions) == 3 and rejected["status"] == "rejected" and not rejected["published"]
    assert "fail" in {g["status"] for g in rejected["gates"]}
    release = parse_release(retained(mosquitto.host, mosquitto.port, topic)[topic], Limits())
    assert release.manifest.version == refreshed["version"]  # unchanged
    table = run("models", "list", "--registry", files["root"] / "registry")
    assert table.exit_code == 0 and "rejected" in table.output and "published" in table.output


def test_regression_gates_decide_on_both_domains() -> None:
    from converter.refresh.gates import Scores, regression_gates

    deployed = Scores(old=0.90, new=0.40)
    status = lambda c: [g.status for g in regression_gates(c, deployed, 0.01, 0.0)]  # noqa: E731
    assert status(Scores(0.895, 0.60)) == ["pass", "pass"]
    assert status(Scores(0.88, 0.60)) == ["fail", "pass"]  # forgets the old domain
    assert status(Scores(0.90, 0.40)) == ["pass", "fail"]  # no gain on the new one
    gates = regression_gates(Scores(0.90, 0.45), deployed, 0.01, 0.10)
    assert gates[1].status == "fail" and "gain +0.0500" in gates[1].reason


def test_watch_counts_arrivals_by_id_and_snapshots_the_folder(tmp_path: Path) -> None:
    from converter.refresh.watch import Watch, arrived, due, snapshot

    folder = captures(tmp_path / "cap", 3)
    assert arrived(folder, 0) == (3, 3) and arrived(folder, 2) == (1, 3)
    assert arrived(tmp_path / "none", 5) == (0, 5)
    plan = Watch(every=3, schedule=10.0)
    assert due(3, plan, 0.0) and due(1, plan, 11.0)
    assert not due(2, plan, 5.0) and not due(0, plan, 100.0)
    copy = snapshot(folder, tmp_path / "registry")
    assert copy.parent == tmp_path / "registry" / "data"
    assert sorted(p.name for p in (copy / "images").iterdir()) == sorted(
        p.name for p in (folder / "images").iterdir()
    )
    assert arrived(copy, 0) == (3, 3)
