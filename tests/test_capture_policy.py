"""Capture as pure logic on a fake clock: the policy picks the right frames within its caps, the
frame path never waits (a full queue drops and counts), the drift window, the on-disk ring, the
capture message, and the host's assembler, near-duplicate hash and store."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.capture.capturer import Capturer
from agent.capture.drift import DriftWindow
from agent.capture.message import (
    CaptureError,
    detections_for,
    header_line,
    make_header,
    parse_part,
    split,
)
from agent.capture.policy import Selector
from agent.capture.ring import DiskRing
from agent.config import ConfigError, load_config
from agent.config.capture import CaptureConfig, CapturePolicy
from agent.decoders.base import BBox, Detection
from agent.outputs.messages import FrameResult, ModelRef
from agent.sources.grabber import Frame
from agent.updates.protocol import ProtocolError, parse_command
from converter.captures import Assembler, Capture, CaptureStore, dhash, hamming
from converter.tasks.detection_folder import read_folder

MODEL = ModelRef("det", 3, "ab" * 32, "x86-avx2", "detection")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def det(label: str, score: float) -> Detection:
    return Detection(0 if label == "a" else 1, label, score, BBox(10, 10, 50, 40))


def quiet(**policy: object) -> CapturePolicy:
    """A policy that picks nothing but what the test turns on."""
    base: dict[str, object] = {"flicker": False, "sample_rate": 0.0, "max_per_minute": 600}
    return CapturePolicy.model_validate({**base, **policy})


def test_uncertain_band_picks_only_unsure_frames() -> None:
    s = Selector(quiet(band=(0.3, 0.6)), clock=Clock())
    assert s.consider([det("a", 0.9)]) is None
    assert s.consider([]) is None  # nothing seen is not "unsure"
    pick = s.consider([det("a", 0.45), det("b", 0.2)])
    assert pick is not None and (pick.reason, pick.index) == ("uncertain", 0)
    assert s.consider([det("a", 0.6)]) is None  # the band is [low, high)
    assert s.counts.picked["uncertain"] == 1


def test_flicker_picks_the_middle_frame_not_a_steady_change() -> None:
    s = Selector(quiet(flicker=True), clock=Clock())
    a, b = [det("a", 0.9)], [det("a", 0.9), det("b", 0.9)]
    picks = [s.consider(x) for x in (a, a, b, b, b, a, a)]  # b enters, stays, leaves: no flicker
    assert picks == [None] * 7
    picks = [s.consider(x) for x in (a, b, a)]  # b appears for one frame
    assert picks[:2] == [None, None]
    assert picks[2] is not None and picks[2].reason == "flicker" and picks[2].index == 1
    assert picks[2].detections == b  # the frame judged is the middle one
    picks = [s.consider(x) for x in (b, a, b)]  # b vanishes for one frame
    assert picks[2] is not None and picks[2].reason == "flicker" and picks[2].detections == a


def test_random_sample_takes_about_its_rate() -> None:
    s = Selector(quiet(sample_rate=0.05), rng=random.Random(7), clock=Clock())
    for _ in range(4000):
        s.consider([det("a", 0.9)])
    picked = s.counts.picked["sample"]  # picked, whatever the caps then let through
    assert 140 <= picked <= 260, picked


def test_frames_per_minute_cap_slides() -> None:
    clock = Clock()
    s = Selector(quiet(sample_rate=1.0, max_per_minute=5), clock=clock)
    got = 0
    for _ in range(20):
        got += s.consider([det("a", 0.9)]) is not None
        clock.t += 1.0
    assert got == 5 and s.counts.capped == 15
    clock.t += 60.0
    assert s.consider([det("a", 0.9)]) is not None  # a minute later the window has room again


def test_captures_are_spread_over_the_minute() -> None:
    """120 a minute: at most 2 in any second, however many frames are picked in it."""
    clock = Clock()
    s = Selector(quiet(sample_rate=1.0, max_per_minute=120), clock=clock)
    per_second = []
    for _ in range(3):
        got = 0
        for _ in range(30):
            got += s.consider([det("a", 0.9)]) is not None
            clock.t += 1 / 30
        per_second.append(got)
    assert per_second == [2, 2, 2]


def test_bytes_per_day_cap() -> None:
    clock = Clock()
    s = Selector(quiet(sample_rate=1.0, max_bytes_per_day=10_000), clock=clock)
    assert s.admit_bytes(6000) and s.bytes_today() == 6000
    assert not s.admit_bytes(6000)  # would go over: refused, counted
    assert s.counts.capped == 1
    assert s.admit_bytes(4000)
    assert s.consider([det("a", 0.9)]) is None  # the day's budget is spent: nothing more picked
    clock.t += 86_400.0
    assert s.admit_bytes(6000) and s.bytes_today() == 6000


def _result(index: int, detections: list[Detection]) -> FrameResult:
    image = np.full((120, 160, 3), index % 255, np.uint8)
    frame = Frame(image, index, 1.7e9 + index / 30, 0.0, 0.0)
    return FrameResult(frame, detections, MODEL)


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    """Nobody drains the queue here: offer() must still return at once for every frame."""
    config = CaptureConfig(enabled=True, queue=2, policy=quiet(sample_rate=1.0))
    capturer = Capturer(config, "cam-1", None, tmp_path / "spool", clock=Clock())
    done = threading.Event()

    def frames() -> None:
        for i in range(50):
            capturer.offer(_result(i, [det("a", 0.9)]))
        done.set()

    thread = threading.Thread(target=frames)
    thread.start()
    assert done.wait(10), "offer() blocked on a full queue"
    counts = capturer.selector.counts
    queued = counts.picked["sample"] - counts.capped  # what the caps let through to the queue
    assert queued > 2 and capturer.dropped == queued - 2
    assert capturer.status()["captures"]["dropped"] == queued - 2
    assert capturer.status()["drift"]["frames"] == 50


def test_capture_off_still_feeds_drift(tmp_path: Path) -> None:
    capturer = Capturer(CaptureConfig(), "cam-1", None, tmp_path / "spool", clock=Clock())
    for i in range(10):
        capturer.offer(_result(i, [det("a", 0.9)] * (i % 3)))
    st = capturer.status()
    assert st["captures"]["enabled"] is False and st["captures"]["dropped"] == 0
    assert st["drift"]["frames"] == 10
    assert not (tmp_path / "spool").exists()  # off: nothing on disk


def test_captures_left_in_the_spool_are_sent_with_capture_off(tmp_path: Path) -> None:
    DiskRing(tmp_path / "spool", 10, 10_000).put(b"left from the last run")
    capturer = Capturer(CaptureConfig(), "cam-1", None, tmp_path / "spool", clock=Clock())
    assert not capturer.enabled and capturer.status()["captures"]["waiting"] == 1


def test_drift_window_rolls_and_restarts_on_a_new_model() -> None:
    clock = Clock()
    w = DriftWindow(10.0, clock)
    assert w.snapshot()["frames"] == 0 and w.snapshot()["top_score_mean"] == 0.0
    for i in range(10):
        w.add(1, "x", 0.9 if i else 0.1, 2)
        clock.t += 1.0
    snap = w.snapshot()
    assert snap["frames"] == 10 and snap["version"] == 1
    assert snap["top_score_mean"] == pytest.approx(0.82)
    assert snap["top_score_p10"] == pytest.approx(0.82)  # 10th percentile of one 0.1 and nine 0.9
    assert snap["detections_per_frame"] == 2.0
    clock.t += 5.0
    assert w.snapshot()["frames"] == 5  # older than 10 s: out
    w.add(2, "y", 0.5, 0)
    snap = w.snapshot()
    assert (snap["frames"], snap["version"], snap["top_score_mean"]) == (1, 2, 0.5)


def test_ring_keeps_bounds_drops_oldest_and_survives_reopen(tmp_path: Path) -> None:
    ring = DiskRing(tmp_path, max_files=3, max_bytes=1000)
    for i in range(5):
        ring.put(bytes([i]) * 100)
    assert len(ring) == 3 and ring.dropped == 2
    assert ring.oldest() == bytes([2]) * 100
    ring.put(b"z" * 900)  # over both bounds: the oldest go until it fits
    assert ring.size == 1000 and len(ring) == 2 and ring.dropped == 4
    again = DiskRing(tmp_path, max_files=3, max_bytes=1000)
    assert len(again) == 2 and again.oldest() == bytes([4]) * 100
    again.pop_oldest()
    again.put(b"y")
    assert again.oldest() == b"z" * 900


def _capture(jpeg: bytes, capture_id: str = "1-1") -> tuple[object, bytes]:
    header = make_header(capture_id, "cam-1", 1.7e9, "sample", MODEL, [], jpeg, (160, 120))
    return header, jpeg


def _jpeg(seed: int, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (160, 120))
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def test_parts_join_in_any_order_and_bad_ones_are_refused() -> None:
    jpeg = _jpeg(1)
    header = make_header("9-1", "cam-1", 1.7e9, "flicker", MODEL, [], jpeg, (160, 120))
    parts = split(header, jpeg, 1024)
    assert len(parts) > 2 and all(len(p) < 1024 + 1024 for p in parts)
    topic = "edgegap/f/devices/cam-1/captures"
    asm = Assembler()
    got = [asm.add(topic, p) for p in reversed(parts)]
    assert got[:-1] == [None] * (len(parts) - 1)
    whole = got[-1]
    assert isinstance(whole, Capture) and whole.jpeg == jpeg and whole.header.reason == "flicker"
    with pytest.raises(CaptureError, match="published on"):
        asm.add("edgegap/f/devices/cam-2/captures", parts[0])
    with pytest.raises(CaptureError, match="schema"):
        parse_part(b'{"schema": "x"}\n')
    with pytest.raises(CaptureError, match="header line"):
        parse_part(b"no newline at all")
    two = header.model_copy(update={"parts": 2})
    stuffed = [header_line(two.model_copy(update={"part": i})) + b"\n" + jpeg for i in (0, 1)]
    assert asm.add(topic, stuffed[0]) is None
    with pytest.raises(CaptureError, match="more than its size"):
        asm.add(topic, stuffed[1])  # parts that add up past the declared size: dropped
    one = split(header, jpeg, len(jpeg) + 1)[0]
    tampered = one[:-1] + bytes([one[-1] ^ 1])
    with pytest.raises(CaptureError, match="sha256"):
        asm.add(topic, tampered)


def test_dhash_sees_a_recompressed_image_as_the_same() -> None:
    def decode(data: bytes) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        return np.asarray(image)

    same = hamming(dhash(decode(_jpeg(1, 95))), dhash(decode(_jpeg(1, 40))))
    other = hamming(dhash(decode(_jpeg(1))), dhash(decode(_jpeg(2))))
    assert same <= 4 < other


def test_store_is_a_detection_folder_bounded_and_deduplicated(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "ds", max_images=3)
    asm = Assembler()
    topic = "edgegap/f/devices/cam-1/captures"
    outcomes = []
    for seed, cid in [(1, "1-1"), (1, "1-1"), (1, "1-2"), (2, "2-1"), (3, "3-1"), (4, "4-1")]:
        jpeg = _jpeg(seed, 90 if cid != "1-2" else 50)
        dets = detections_for([det("b", 0.41)], 0.5)
        header = make_header(cid, "cam-1", 1.7e9, "uncertain", MODEL, dets, jpeg, (160, 120))
        capture = asm.add(topic, split(header, jpeg, len(jpeg))[0])
        assert capture is not None
        outcomes.append(store.add(capture))
    assert outcomes == ["stored", "duplicate", "duplicate", "stored", "stored", "stored"]
    assert len(store) == 3 and store.evicted == 1
    folder = read_folder(tmp_path / "ds")
    assert len(folder) == 3 and all(len(b) == 0 for b in folder.boxes)  # unlabelled
    doc = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    prov = doc["images"][0]["provenance"]
    assert prov["capture_id"] == "2-1" and prov["model"]["version"] == 3
    assert prov["reason"] == "uncertain" and prov["device_id"] == "cam-1"
    assert doc["images"][0]["device_detections"] == [
        {"label": "b", "category_id": 2, "score": 0.41, "bbox": [5.0, 5.0, 20.0, 15.0]}
    ]
    assert doc["annotations"] == [] and doc["categories"] == [{"id": 2, "name": "b"}]
    assert len(list((tmp_path / "ds" / "images").iterdir())) == 3


def test_capture_commands_parse_or_say_why_not() -> None:
    assert parse_command(b'{"cmd": "capture", "action": "on"}').action == "on"
    cmd = parse_command(b'{"cmd": "capture", "action": "policy", "policy": {"sample_rate": 0.1}}')
    assert cmd.policy == {"sample_rate": 0.1}
    for raw, why in [
        (b'{"cmd": "capture"}', "needs an action"),
        (b'{"cmd": "capture", "action": "policy"}', "needs a policy"),
        (b'{"cmd": "capture", "action": "off", "policy": {}}', "takes no policy"),
    ]:
        with pytest.raises(ProtocolError, match=why):
            parse_command(raw)


def test_set_policy_merges_and_refuses_bad_values(tmp_path: Path) -> None:
    capturer = Capturer(CaptureConfig(), "cam-1", None, tmp_path, clock=Clock())
    policy = capturer.set_policy({"band": [0.2, 0.5]})
    assert policy.band == (0.2, 0.5) and policy.sample_rate == 0.01
    bads: list[tuple[dict[str, Any], str]] = [
        ({"band": [0.6, 0.2]}, "band"),
        ({"sample_rate": 2}, "sample_rate"),
        ({"colour": 1}, "colour"),
    ]
    for bad, why in bads:
        with pytest.raises(ValueError, match=why):
            capturer.set_policy(bad)
    assert capturer.selector.policy.band == (0.2, 0.5)  # a refused policy changes nothing


def test_capture_needs_a_broker() -> None:
    config = load_config(None, {"bundle.path": "b", "source.uri": "0", "capture.enabled": True})
    with pytest.raises(ConfigError, match="capture.enabled: needs mqtt.broker"):
        config.require_runnable()
    with pytest.raises(ConfigError, match="capture.policy.band"):
        load_config(None, {"capture.policy.band": [0.5, 0.5]})
