"""Message schema, publishing policy and local outputs (pure logic and real files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.config import PublishConfig, PublishMode
from agent.decoders.base import BBox, Detection
from agent.metrics import RollingStats
from agent.outputs.messages import DetectionsEncoder, FrameResult, ModelRef
from agent.outputs.schemas import DetectionsMessage, StatusMessage, schema_files
from agent.outputs.sinks import JsonlSink, Outputs, PublishPolicy
from agent.sources.grabber import Frame

ROOT = Path(__file__).resolve().parents[1]
CAT = Detection(0, "cat", 0.9, BBox(10, 10, 50, 50))
DOG = Detection(1, "dog", 0.8, BBox(100, 100, 150, 150))


MODEL = ModelRef("det", 3, "a" * 64, "x86-avx2", "detection")


def result(detections: list[Detection], index: int = 7, model: ModelRef = MODEL) -> FrameResult:
    frame = Frame(np.zeros((48, 64, 3), np.uint8), index, 1_700_000_000.25, 0.0, 0.001)
    timings = {"grab": 0.001, "pre": 0.002, "wait": 0.0, "invoke": 0.01, "post": 0.0005}
    return FrameResult(frame, detections, model, timings)


def message(r: FrameResult, device: str = "d", fleet: str = "f", sent: float = 0.0) -> bytes:
    return DetectionsEncoder(device, fleet, r.model)(r, sent)


def test_detections_message_matches_the_schema() -> None:
    text = message(result([CAT, DOG]), "cam-1", "lab", 1_700_000_000.5)
    msg = DetectionsMessage.model_validate_json(text)
    assert msg.device_id == "cam-1" and msg.fleet == "lab" and msg.sent == 1_700_000_000.5
    assert msg.frame.index == 7 and msg.frame.width == 64 and msg.frame.height == 48
    assert msg.frame.timestamp == 1_700_000_000.25
    assert [d.label for d in msg.detections] == ["cat", "dog"]
    assert msg.detections[0].box == [10.0, 10.0, 50.0, 50.0]
    assert msg.latency_ms.total == pytest.approx(13.5)
    assert (msg.model.name, msg.model.version, msg.model.task) == ("det", 3, "detection")
    # Extra keys are schema violations: the schema is closed.
    payload = json.loads(text)
    payload["unexpected"] = 1
    with pytest.raises(ValueError, match="unexpected"):
        DetectionsMessage.model_validate(payload)


def test_detections_message_numbers_and_strings_round_trip() -> None:
    """Numbers carry fixed decimals, rounded as round() does; strings are escaped as JSON."""
    odd = 'a "quoted" \\ label, 100% \u00e9\u00e8 \u2603\n'
    rng = np.random.default_rng(3)
    dets = [
        Detection(int(c), odd if c == 2 else f"c{c}", float(s), BBox(*map(float, b)))
        for c, s, b in zip(
            rng.integers(0, 5, 40), rng.random(40), rng.random((40, 4)) * 700, strict=True
        )
    ]
    dets.append(Detection(9, "top-1", 0.123456))  # a classifier's answer: no box
    r = result(dets, model=ModelRef('n"%s%%', 12, "b" * 64, "p", "detection"))
    r.timings.update(grab=0.00123456, invoke=0.0021234567)
    encoder = DetectionsEncoder("dev %d", 'fleet"%', r.model)
    for _ in range(2):  # the second pass uses the labels encoded on the first
        got = json.loads(encoder(r, 1_700_000_000.1234567))
        DetectionsMessage.model_validate(got)
        assert (got["device_id"], got["fleet"], got["model"]["name"]) == (
            "dev %d",
            'fleet"%',
            'n"%s%%',
        )
        assert got["sent"] == round(1_700_000_000.1234567, 6)
        for d, item in zip(dets, got["detections"], strict=True):
            assert item["label"] == d.label and item["class_id"] == d.class_id
            assert item["score"] == round(d.score, 4)
            assert item["box"] == (d.box.as_list() if d.box is not None else None)
        stages = {k: round(v * 1000.0, 3) for k, v in r.timings.items()}
        assert {k: got["latency_ms"][k] for k in stages} == stages
        assert got["latency_ms"]["total"] == pytest.approx(sum(stages.values()), abs=0.003)
    empty = json.loads(message(result([])))
    assert empty["detections"] == [] and DetectionsMessage.model_validate(empty)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_detections_message_refuses_numbers_json_has_not(bad: float) -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        message(result([CAT, Detection(0, "cat", 0.9, BBox(1.0, bad, 2.0, 3.0))]))
    with pytest.raises(ValueError, match="not a JSON number"):
        message(result([Detection(0, "cat", bad)]))


def test_the_schema_files_are_generated_from_the_code() -> None:
    """docs/schemas/ must be what `python -m agent.outputs.schemas` writes today."""
    files = schema_files()
    assert sorted(files) == ["detections.json", "status.json"]
    for name, text in files.items():
        on_disk = ROOT / "docs" / "schemas" / name
        assert on_disk.is_file() and on_disk.read_text() == text, (
            f"docs/schemas/{name} drifted from the code: run python -m agent.outputs.schemas"
        )
    assert json.loads(files["detections.json"])["title"] == "DetectionsMessage"
    StatusMessage.model_validate(
        {
            "schema": "edgegap.status/1",
            "state": "offline",
            "device_id": "d",
            "fleet": "f",
            "agent_version": "1",
            "reason": "lost",
        }
    )


def test_publish_policies() -> None:
    every = PublishPolicy(PublishConfig(mode=PublishMode.EVERY))
    assert all(every.should_publish([CAT], t) for t in (0.0, 0.01, 0.02))
    interval = PublishPolicy(PublishConfig(mode=PublishMode.INTERVAL, interval_s=1.0))
    assert [interval.should_publish([CAT], t) for t in (0.0, 0.5, 1.0, 1.2, 2.1)] == [
        True,
        False,
        True,
        False,
        True,
    ]
    change = PublishPolicy(
        PublishConfig(mode=PublishMode.ON_CHANGE, change_iou=0.5, heartbeat_s=10)
    )
    moved_a_little = Detection(0, "cat", 0.7, BBox(12, 12, 52, 52))
    moved_a_lot = Detection(0, "cat", 0.9, BBox(40, 40, 80, 80))
    sequence = [[CAT], [moved_a_little], [CAT, DOG], [CAT, DOG], [DOG, moved_a_lot], [], [], []]
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 16.0]
    got = [change.should_publish(d, t) for d, t in zip(sequence, times, strict=True)]
    assert got == [
        True,
        False,
        True,
        False,
        True,
        True,
        False,
        True,
    ]  # the last one is the heartbeat


def test_jsonl_sink_and_a_failing_output_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    good = JsonlSink(path)
    full = JsonlSink(Path("/dev/full"))  # every write fails with ENOSPC, like a full disk
    outputs = Outputs([full, good])
    for i in range(3):
        r = result([CAT], index=i)
        outputs.write(r, message(r))
    outputs.close()
    assert [json.loads(x)["frame"]["index"] for x in path.read_text().splitlines()] == [0, 1, 2]
    assert full.errors == 3 and good.errors == 0


def test_rolling_stats() -> None:
    s = RollingStats(window_s=2.0)
    for i in range(21):
        s.add(0.010 if i % 10 else 0.050, now=100.0 + i * 0.1)
    assert s.fps(now=102.0) == pytest.approx(10.0, rel=0.01)
    p50, p99 = s.percentiles_ms()
    assert p50 == pytest.approx(10.0) and p99 is not None and p99 > 40
    assert s.fps(now=200.0) == 0.0
