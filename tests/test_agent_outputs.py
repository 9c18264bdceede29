"""Message schema, publishing policy and local outputs (pure logic and real files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.config import PublishConfig, PublishMode
from agent.decoders import BBox, Detection
from agent.grabber import Frame
from agent.messages import (
    DetectionsMessage,
    FrameResult,
    ModelRef,
    StatusMessage,
    detections_payload,
    encode,
    schema_docs,
)
from agent.metrics import RollingStats
from agent.outputs import JsonlSink, Outputs, PublishPolicy

ROOT = Path(__file__).resolve().parents[1]
CAT = Detection(0, "cat", 0.9, BBox(10, 10, 50, 50))
DOG = Detection(1, "dog", 0.8, BBox(100, 100, 150, 150))


def result(detections: list[Detection], index: int = 7) -> FrameResult:
    frame = Frame(np.zeros((48, 64, 3), np.uint8), index, 1_700_000_000.25, 0.0, 0.001)
    timings = {"grab": 0.001, "pre": 0.002, "wait": 0.0, "invoke": 0.01, "post": 0.0005}
    return FrameResult(
        frame, detections, ModelRef("det", 3, "a" * 64, "x86-avx2", "detection"), timings
    )


def test_payload_matches_the_schema() -> None:
    payload = detections_payload(result([CAT, DOG]), "cam-1", "lab", 1_700_000_000.5)
    msg = DetectionsMessage.model_validate_json(encode(payload))
    assert msg.frame.index == 7 and msg.frame.width == 64 and msg.frame.height == 48
    assert msg.detections[0].box == [10.0, 10.0, 50.0, 50.0]
    assert msg.latency_ms.total == pytest.approx(13.5)
    assert msg.model.version == 3
    # Extra keys are schema violations: the schema is closed.
    payload["unexpected"] = 1
    with pytest.raises(ValueError, match="unexpected"):
        DetectionsMessage.model_validate(payload)


def test_docs_carry_the_current_schema() -> None:
    docs = (ROOT / "docs" / "agent.md").read_text()
    assert schema_docs() in docs, (
        "regenerate the schema block in docs/agent.md: python -m agent.messages"
    )
    assert (
        json.loads(schema_docs().split("```json\n")[1].split("```")[0])["title"]
        == "DetectionsMessage"
    )
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
        outputs.write(r, encode(detections_payload(r, "d", "f", 0.0)))
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
