"""The refresh loop on a tiny scale: domain b, relabel, refresh with its gates against a real
mosquitto, the registry, and one-line errors for bad input.

The student is the committed reference detector; captures, holdouts and epochs are few. The
profile's accuracy-drop budget is widened to 10 points here: 32 captures in two epochs forget
more of the old domain than the benchmark's run (benchmarks/refresh.py) does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
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
from converter.tasks.detection_folder import ANNOTATIONS_FILE, DatasetError  # noqa: E402
from converter.zoo import detection_data as dd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "converter" / "zoo" / "weights" / "detector.keras"
PROFILE = ROOT / "firmware_profiles" / "x86-avx2.yaml"
SIZE = 224
CAPTURES, HOLDOUT = 32, 32


def run(*args: Any) -> Result:
    from converter.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def collected(folder: Path, count: int, start: int = 0) -> None:
    """Domain b frames added to a capture folder as `edgegap collect` stores them: a device's
    JPEG and header through the collector's store (ids go on from the folder's last one)."""
    import cv2

    from agent.capture.message import make_header
    from agent.outputs.messages import ModelRef
    from converter.captures import Capture, CaptureStore

    store = CaptureStore(folder, max_images=1000)
    model = ModelRef("detector", 1, "0" * 64, "x86-avx2", "detection")
    for i, s in enumerate(dd.generate("train", count, size=SIZE, start=start, domain="b")):
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        assert ok
        header = make_header(f"c{start + i}", "cam-1", time.time(), "uncertain", model, [],
                             jpeg.tobytes(), (SIZE, SIZE))  # fmt: skip
        assert store.add(Capture(header, jpeg.tobytes())) == "stored"


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


def _args(files: dict[str, Path], data: Path, student: Path | None, url: str) -> list[Any]:
    return [
        "refresh", *(["--student", student] if student else []), "--data", data,
        "--holdout", files["holdout"], "--old-holdout", files["old"], "--profile", files["profile"],
        "--channel", "lab", "--sign-key", files["key"], "--registry", files["root"] / "registry",
        "--broker", url, "--epochs", 2, "--learning-rate", 1e-3, "--replay-ratio", 1,
        "--stage", "stable", "--calibration-samples", 16,
    ]  # fmt: skip


def _refresh(files: dict[str, Path], data: Path, student: Path, url: str, *extra: Any) -> Result:
    return run(*_args(files, data, student, url), *extra)


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
    # --watch checks its input before it waits for captures
    watch = ["--watch", "--registry", tmp_path / "empty-registry"]
    err = one_line_error(run(*_args(files, unlabelled, None, url), *watch))
    assert "has no published version: give --student" in err
    err = one_line_error(run(*_args(files, tmp_path / "none", WEIGHTS, url), *watch))
    assert "capture folder not found" in err
    err = one_line_error(
        run(*_args({**files, "holdout": nolabels}, unlabelled, WEIGHTS, url), *watch)
    )
    assert "has no labels" in err


@pytest.mark.parametrize(
    "setting", [["--every", 200], ["--interval", 5], ["--schedule", 60], ["--rounds", 1]]
)
def test_watch_settings_without_watch_are_a_usage_error(setting: list[Any], tmp_path: Path) -> None:
    """Given for a one-shot refresh they would be ignored; even a default value given is refused,
    before any model is loaded or anything written."""
    registry = tmp_path / "registry"
    args = ["refresh", "--student", WEIGHTS, "--data", tmp_path, "--holdout", tmp_path,
            "--profile", "x86-avx2", "--channel", "lab", "--sign-key", tmp_path / "k.key",
            "--registry", registry, "--broker", "mqtt://127.0.0.1:1"]  # fmt: skip
    result = run(*args, *setting)
    assert result.exit_code == 2
    assert f"{setting[0]} needs --watch" in one_line_error(result)
    assert not registry.exists()


def test_refresh_help_says_which_settings_need_watch() -> None:
    result = run("refresh", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--every, --interval, --schedule and --rounds only apply with --watch" in text


def _watch(files: dict[str, Path], folder: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    """`edgegap refresh --watch` as a user runs it: a process of its own, one round."""
    args = _args(files, folder, WEIGHTS, url)
    args += ["--watch", "--every", CAPTURES, "--interval", 0.2, "--rounds", 1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "converter", *map(str, args)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)


def recipes_kept(registry: Path, versions: list[dict[str, Any]]) -> None:
    """Each version keeps the recipe `edgegap models rebuild` converts it again with; the data
    the versions of one refresh share is kept once (hard links into the registry's pool)."""
    for record in versions:
        kept = registry / f"v{record['version']}" / "conversion"
        assert record["conversion"]["options"]["calibration"] == "conversion/calibration"
        assert (kept / "calibration").is_dir() and (kept / "validation").is_dir()
        assert record["conversion"]["profile"]["budgets"]["max_accuracy_drop"] == 0.10
    holdout = [registry / f"v{r['version']}" / "conversion" / "validation" / ANNOTATIONS_FILE
               for r in versions]  # fmt: skip
    assert holdout[0].stat().st_ino == holdout[1].stat().st_ino


def test_watch_refreshes_by_itself_and_gates_reject_shuffled_labels(
    files: dict[str, Path], mosquitto: Any, tmp_path: Path
) -> None:
    """One watched round, end to end (captures arrive while it waits; it relabels, refreshes,
    gates and publishes with no human step), then a refresh from the same captures with their
    labels shuffled, which the gates reject."""
    registry, folder, log = files["root"] / "registry", tmp_path / "captures", tmp_path / "log"
    first = CAPTURES - 8
    collected(folder, first)
    proc = _watch(files, folder, mosquitto.url, log)
    try:
        _wait_for(log, f"{first} of {CAPTURES} new captures: waiting", proc, 120)
        time.sleep(1.0)  # five looks at the folder: still too few
        assert proc.poll() is None and not (registry / "data").exists()
        collected(folder, CAPTURES - first, start=first)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output
    assert f"{CAPTURES} new captures: relabel" in output and "passed" in output

    versions = json.loads(run("models", "list", "--json", "--registry", registry).output)
    parent, refreshed = versions
    assert parent["status"] == "imported" and refreshed["parent"] == parent["version"]
    assert refreshed["status"] == "published"
    recipes_kept(registry, versions)
    assert refreshed["accuracy"]["new"] > parent["accuracy"]["new"]
    assert {g["name"]: g["status"] for g in refreshed["gates"]}["new domain"] == "pass"
    data = Path(refreshed["data"]["captures"])
    assert data.parent == registry / "data"
    doc = json.loads((data / ANNOTATIONS_FILE).read_text())
    assert [e["id"] for e in doc["images"]] == list(range(1, CAPTURES + 1))
    assert all("label" in e for e in doc["images"]) and doc["annotations"]
    assert len(list((data / "images").iterdir())) == CAPTURES
    state = json.loads((registry / "watch.json").read_text())
    assert state["last_id"] == CAPTURES and state["version"] == refreshed["version"]
    topic = "edgegap/default/models/lab/manifest"
    release = parse_release(retained(mosquitto.host, mosquitto.port, topic)[topic], Limits())
    assert release.manifest.version == refreshed["version"]

    # the same relabelled captures, labels shuffled; the student's parent is in the registry
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    assert shuffle_labels(bad) > 0
    result = _refresh(files, bad, WEIGHTS, mosquitto.url)
    assert "rejected" in one_line_error(result)
    versions = json.loads(run("models", "list", "--json", "--registry", registry).output)
    rejected = versions[-1]
    assert len(versions) == 3 and rejected["status"] == "rejected" and not rejected["published"]
    assert "fail" in {g["status"] for g in rejected["gates"]}
    release = parse_release(retained(mosquitto.host, mosquitto.port, topic)[topic], Limits())
    assert release.manifest.version == refreshed["version"]  # unchanged
    table = run("models", "list", "--registry", registry)
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

    folder = tmp_path / "cap"
    collected(folder, 3)
    assert arrived(folder, 0) == (3, 3) and arrived(folder, 2) == (1, 3)
    (tmp_path / "new" / "images").mkdir(parents=True)  # a collector's folder, nothing yet
    assert arrived(tmp_path / "new", 5) == (0, 5)
    with pytest.raises(DatasetError, match="not found"):
        arrived(tmp_path / "none", 5)
    plan = Watch(every=3, schedule=10.0)
    assert due(3, plan, 0.0) and due(1, plan, 11.0)
    assert not due(2, plan, 5.0) and not due(0, plan, 100.0)
    copy = snapshot(folder, tmp_path / "registry")
    assert copy.parent == tmp_path / "registry" / "data"
    assert sorted(p.name for p in (copy / "images").iterdir()) == sorted(
        p.name for p in (folder / "images").iterdir()
    )
    assert arrived(copy, 0) == (3, 3)
    # an image the collector evicts while the copy is made is left out, not a crash
    (folder / "images" / "000002.jpg").unlink()
    again = snapshot(folder, tmp_path / "registry")
    assert again != copy and again.parent == copy.parent
    assert [e["id"] for e in json.loads((again / ANNOTATIONS_FILE).read_text())["images"]] == [1, 3]
