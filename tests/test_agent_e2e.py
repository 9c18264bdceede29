"""The agent end to end: real converted models, generated videos, the real mosquitto broker."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from conftest import Broker, free_port
from paho.mqtt.enums import CallbackAPIVersion
from test_agent_kit import (
    COLORS_BGR,
    SRC_H,
    SRC_W,
    ManualClock,
    cached_bundle,
    cell_box,
    detections_by_frame,
    render_frame,
    scene,
    write_images,
    write_video,
)

import agent.sources.grabber as grabber_module
from agent.app import Agent, RunSummary
from agent.bundle.loading import write_bundle
from agent.cli import cli
from agent.config import load_config
from agent.decoders import needed_roles
from agent.decoders.base import BBox
from agent.outputs.schemas import DetectionsMessage, StatusMessage

ROOT = Path(__file__).resolve().parents[1]


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not met in {timeout} s"
        time.sleep(0.02)


def step_through(clock: ManualClock, interval: float, frames: int, done: Callable[[], int]) -> None:
    """Let a paced file's frames fall due one at a time, each once the one before is done."""
    for k in range(1, frames):
        wait_until(lambda k=k: done() >= k, what=f"frame {k - 1} done")
        clock.advance(interval)


def check_frame(msg: dict[str, Any]) -> None:
    """Every ground-truth square of the frame is found, with its label, in source pixels; nothing else."""
    i = msg["frame"]["index"]
    truth = {(label, cell_box(row, col)) for label, row, col in scene(i)}
    found = msg["detections"]
    assert len(found) == len(truth), (i, found)
    for label, box in truth:
        best = max(
            (BBox(*d["box"]).iou(BBox(*box)) for d in found if d["label"] == label), default=0.0
        )
        assert best > 0.9, (i, label, box, found)


@pytest.mark.parametrize(
    ("layout", "prepare_on_grab"), [("ssd_postprocess", True), ("ssd_raw", False), ("yolo", None)]
)
def test_detector_layouts_find_the_squares(
    layout: str, prepare_on_grab: bool | None, tmp_path: Path
) -> None:
    """A converted model of each layout runs through the agent on a video; boxes match ground truth."""
    bundle = cached_bundle(layout)
    video = write_video(tmp_path / "clip.avi", 12)
    out = tmp_path / "detections.jsonl"
    cfg = load_config(
        None,
        {
            "bundle.path": str(bundle.path),
            "source.uri": str(video),
            "source.rate": "all",
            "outputs.jsonl": str(out),
            "pipeline.prepare_on_grab": prepare_on_grab,
        },
    )
    agent = Agent(cfg)
    agent.start()
    summary = agent.run()
    assert summary.frames == 12 and summary.dropped == 0 and summary.stopped_by == "end of source"
    assert summary.backend == "litert"
    lines = out.read_text().splitlines()
    assert [json.loads(x)["frame"]["index"] for x in lines] == list(range(12))
    for line in lines:
        msg = DetectionsMessage.model_validate_json(line).model_dump(by_alias=True)
        assert msg["model"] == {"name": bundle.manifest.name, "version": 1, "task": "detection"}
        assert (msg["frame"]["width"], msg["frame"]["height"]) == (SRC_W, SRC_H)
        assert msg["latency_ms"]["invoke"] > 0
        check_frame(msg)


def test_classifier_reports_top_k(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, label in enumerate(["green", "red", "green"]):
        img = np.zeros((SRC_H, SRC_W, 3), np.uint8)
        img[40:200, 60:260] = COLORS_BGR[label]
        cv2.imwrite(str(folder / f"{i}.png"), img)
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(
        cli,
        [
            "run",
            "--bundle",
            str(cached_bundle("classification").path),
            "--source",
            str(folder),
            "--jsonl",
            str(out),
            "--top-k",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    msgs = [DetectionsMessage.model_validate_json(x) for x in out.read_text().splitlines()]
    assert [m.detections[0].label for m in msgs] == ["green", "red", "green"]
    assert all(len(m.detections) == 2 and m.detections[0].box is None for m in msgs)
    assert all(m.detections[0].score > 0.5 > m.detections[1].score for m in msgs)


class Subscriber:
    """A paho client that records every message under a topic filter."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-{time.monotonic_ns()}"
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def retained(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p, r in self.messages if t.endswith(suffix) and r]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribe(mosquitto: Broker) -> Iterator[Callable[[str], Subscriber]]:
    subs: list[Subscriber] = []

    def make(topic: str) -> Subscriber:
        s = Subscriber(mosquitto, topic)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


def agent_process(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "agent.log").open("w"),
        text=True,
    )


def _late_status_is_online(subscribe: Callable[[str], Subscriber], model_name: str) -> None:
    """A late subscriber gets the retained online status, naming the model and the backend."""
    late = subscribe("edgegap/test/devices/cam-1/status")
    wait_until(lambda: bool(late.retained("/status")), what="retained status")
    status = StatusMessage.model_validate(late.retained("/status")[-1])
    assert status.state == "online"
    assert status.model is not None and status.model.name == model_name
    assert status.backend is not None and status.backend.name == "litert" and status.backend.version


def _metrics_cover_every_stage(port: int) -> None:
    url = f"http://127.0.0.1:{port}/metrics"
    metrics = urllib.request.urlopen(url, timeout=5).read().decode()
    for stage in ("grab", "pre", "invoke", "post", "publish"):
        assert f'edgegap_stage_seconds_bucket{{le="+Inf",stage="{stage}"}}' in metrics
    assert "edgegap_fps " in metrics and "edgegap_dropped_frames " in metrics
    assert "edgegap_model_version 1.0" in metrics and 'backend="litert"' in metrics


def _preview_serves_page_and_snapshot(port: int) -> None:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
    assert "/stream.mjpg" in page
    jpeg = urllib.request.urlopen(f"http://127.0.0.1:{port}/snapshot.jpg", timeout=5).read()
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (SRC_H, SRC_W, 3)


def _killed_agent_leaves_last_will(
    proc: subprocess.Popen[str], live: Subscriber, subscribe: Callable[[str], Subscriber]
) -> None:
    """The process dies without a goodbye: the broker publishes the retained last will."""
    proc.kill()
    proc.wait(10)
    wait_until(lambda: any(s["state"] == "offline" for s in live.on("/status")), what="last will")
    will = StatusMessage.model_validate(live.on("/status")[-1])
    assert will.state == "offline" and will.reason == "lost"
    after = subscribe("edgegap/test/devices/cam-1/status")
    wait_until(lambda: bool(after.retained("/status")), what="retained will")
    assert after.retained("/status")[-1]["state"] == "offline"


def test_mqtt_detections_status_metrics_preview_and_last_will(
    mosquitto: Broker, subscribe: Callable[[str], Subscriber], tmp_path: Path
) -> None:
    bundle = cached_bundle("yolo")
    video = write_video(tmp_path / "clip.avi", 30)
    metrics_port, preview_port = free_port(), free_port()
    live = subscribe("edgegap/test/devices/cam-1/#")
    args = ["run", "--bundle", str(bundle.path), "--source", str(video), "--loop",
            "--broker", mosquitto.url, "--device-id", "cam-1", "--fleet", "test",
            "--metrics-port", str(metrics_port), "--metrics-bind", "127.0.0.1",
            "--preview-port", str(preview_port)]  # fmt: skip
    proc = agent_process(args, tmp_path)
    try:
        wait_until(lambda: len(live.on("/detections")) >= 10, what="10 detection messages")
        for msg in live.on("/detections")[:10]:
            m = DetectionsMessage.model_validate(msg)
            assert m.device_id == "cam-1" and m.fleet == "test"
            check_frame(msg)
        _late_status_is_online(subscribe, bundle.manifest.name)
        _metrics_cover_every_stage(metrics_port)
        _preview_serves_page_and_snapshot(preview_port)
        _killed_agent_leaves_last_will(proc, live, subscribe)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigterm_shuts_down_cleanly(
    mosquitto: Broker, subscribe: Callable[[str], Subscriber], tmp_path: Path
) -> None:
    video = write_video(tmp_path / "clip.avi", 10)
    live = subscribe("edgegap/default/devices/cam-2/#")
    proc = agent_process(
        [
            "run",
            "--bundle",
            str(cached_bundle("yolo").path),
            "--source",
            str(video),
            "--loop",
            "--broker",
            mosquitto.url,
            "--device-id",
            "cam-2",
        ],
        tmp_path,
    )
    try:
        wait_until(
            lambda: any(s["state"] == "online" for s in live.on("/status")), what="online status"
        )
        wait_until(lambda: len(live.on("/detections")) >= 3, what="detections")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / "agent.log").read_text()
    assert "stopped by signal" in out
    wait_until(lambda: live.on("/status")[-1]["state"] == "offline", what="offline status")
    final = StatusMessage.model_validate(live.on("/status")[-1])
    assert final.reason == "shutdown" and final.health == "stopped" and (final.frames or 0) > 0
    log = (tmp_path / "agent.log").read_text()
    assert "WARNING" not in log.replace("no trusted keys", "").split("SIGTERM received")[1], log


def test_broker_outage_does_not_stop_inference(
    mosquitto: Broker, subscribe: Callable[[str], Subscriber], tmp_path: Path
) -> None:
    video = write_video(tmp_path / "clip.avi", 20)
    live = subscribe("edgegap/default/devices/cam-3/detections")
    cfg = load_config(
        None,
        {
            "bundle.path": str(cached_bundle("yolo").path),
            "source.uri": str(video),
            "source.loop": True,
            "mqtt.broker": mosquitto.url,
            "device_id": "cam-3",
        },
    )
    agent = Agent(cfg)
    agent.start()
    result: list[RunSummary | BaseException] = []

    def serve() -> None:
        try:
            result.append(agent.run())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert agent.pipeline is not None and agent.mqtt is not None
        wait_until(lambda: len(live.on("/detections")) >= 5, what="first messages")
        mosquitto.stop()
        wait_until(lambda: not agent.mqtt.connected, what="disconnect noticed")
        frames_at_outage = agent.pipeline.stats.frames
        wait_until(
            lambda: (
                agent.pipeline.stats.frames >= frames_at_outage + 10 and agent.mqtt.dropped >= 10
            ),
            what="frames served while the broker is down",
        )
        assert not agent.mqtt.connected
        assert thread.is_alive()
        before = len(live.on("/detections"))
        mosquitto.start()
        wait_until(
            lambda: len(live.on("/detections")) >= before + 5, timeout=60, what="publishing resumed"
        )
        assert agent.mqtt.connects >= 2
    finally:
        agent.request_stop()
        thread.join(20)
    assert isinstance(result[0], RunSummary) and result[0].stopped_by == "signal"


def test_cli_bad_inputs_fail_once_with_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    bundle = cached_bundle("yolo")
    video = write_video(tmp_path / "clip.avi", 3)

    def run(*args: str) -> tuple[int, str]:
        res = runner.invoke(cli, ["run", *args])
        assert "Traceback" not in res.output
        return res.exit_code, res.output.strip().splitlines()[-1] if res.output.strip() else ""

    code, line = run("--bundle", str(tmp_path / "nope"), "--source", str(video))
    assert code == 78 and line == f"Error: bundle not found: {tmp_path / 'nope'} is not a directory"
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00" * 4096)
    code, line = run("--bundle", str(bundle.path), "--source", str(bad))
    assert code == 78 and line.startswith("Error:") and "bad.avi" in line
    code, line = run("--bundle", str(bundle.path), "--source", str(tmp_path / "gone.mp4"))
    assert code == 78 and line == f"Error: video file not found: {tmp_path / 'gone.mp4'}"
    # A bundle whose golden outputs do not reproduce is refused before serving.
    m = bundle.manifest
    assert m.golden is not None

    def shifted(enc: str) -> str:
        values = np.frombuffer(base64.b64decode(enc), "<f4") + 0.5
        return base64.b64encode(values.astype("<f4").tobytes()).decode()

    wrong = m.golden.model_copy(
        update={"expected": [[shifted(e) for e in row] for row in m.golden.expected]}
    )
    tampered = write_bundle(
        tmp_path / "tampered", bundle.model_bytes(), m.model_copy(update={"golden": wrong})
    )
    code, line = run("--bundle", str(tampered.path), "--source", str(video))
    assert code == 78 and "golden check failed" in line
    # A port already taken is a config error, not a traceback.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, line = run(
            "--bundle", str(bundle.path), "--source", str(video), "--preview-port", port
        )
    assert code == 78 and line == "Error: preview.port: cannot open: Address already in use"
    # An ended video is a clean stop.
    res = runner.invoke(cli, ["run", "--bundle", str(bundle.path), "--source", str(video)])
    assert res.exit_code == 0 and "3 frames, stopped by end of source" in res.output


def test_trusted_keys_gate_the_bundle(tmp_path: Path) -> None:
    from agent.bundle.signing import generate_keypair, load_private_key, sign_manifest

    bundle = cached_bundle("yolo")
    priv, pub = generate_keypair(tmp_path / "keys")
    _, other = generate_keypair(tmp_path / "other")
    signed = write_bundle(
        tmp_path / "signed",
        bundle.model_bytes(),
        sign_manifest(bundle.manifest, load_private_key(priv)),
    )
    video = write_video(tmp_path / "clip.avi", 2)
    runner = CliRunner()
    ok = runner.invoke(
        cli,
        ["run", "--bundle", str(signed.path), "--source", str(video), "--trusted-key", str(pub)],
    )
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(
        cli,
        ["run", "--bundle", str(signed.path), "--source", str(video), "--trusted-key", str(other)],
    )
    assert bad.exit_code == 78 and "not trusted" in bad.output
    unsigned = runner.invoke(
        cli,
        ["run", "--bundle", str(bundle.path), "--source", str(video), "--trusted-key", str(pub)],
    )
    assert unsigned.exit_code == 78 and "not signed" in unsigned.output


def test_source_vanishing_mid_run_exits_once_with_a_clear_error(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", 40)
    out = tmp_path / "out.jsonl"
    proc = agent_process(
        [
            "run",
            "--bundle",
            str(cached_bundle("yolo").path),
            "--source",
            str(folder),
            "--rate",
            "native",
            "--fps",
            "20",
            "--jsonl",
            str(out),
        ],
        tmp_path,
    )
    try:
        wait_until(
            lambda: out.exists() and len(out.read_text().splitlines()) >= 3, what="first frames"
        )
        shutil.rmtree(folder)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "agent.log").read_text().strip().splitlines()
    assert proc.returncode == 1
    assert log[-1] == f"Error: image folder {folder} vanished mid-run"


def test_annotated_frames(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 6)
    res = CliRunner().invoke(
        cli,
        [
            "run",
            "--bundle",
            str(cached_bundle("yolo").path),
            "--source",
            str(video),
            "--rate",
            "all",
            "--annotate-dir",
            str(tmp_path / "ann"),
            "--annotate-every",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in (tmp_path / "ann").iterdir())
    assert files == ["frame000000.jpg", "frame000002.jpg", "frame000004.jpg"]
    img = cv2.imread(str(tmp_path / "ann" / files[0])).astype(int)
    changed = np.abs(img - render_frame(0).astype(int)).sum(axis=2) > 100
    label, row, col = scene(0)[1]
    assert label == "green"
    x0, y0, x1, y1 = (int(v) for v in cell_box(row, col))
    assert changed[y1 - 2, x0 + 5 : x1 - 5].mean() > 0.5  # the box outline, in its class color
    assert changed[200:, :200].mean() < 0.05  # and the empty background is untouched


def test_commands_over_mqtt(
    mosquitto: Broker, subscribe: Callable[[str], Subscriber], tmp_path: Path
) -> None:
    """set_threshold on devices/<id>/cmd takes effect on the next frames and is acknowledged."""
    video = write_video(tmp_path / "clip.avi", 10)
    live = subscribe("edgegap/default/devices/cam-4/#")
    cfg = load_config(
        None,
        {
            "bundle.path": str(cached_bundle("yolo").path), "source.uri": str(video), "source.loop": True,
            "mqtt.broker": mosquitto.url, "device_id": "cam-4", "pipeline.max_frames": 400,
        },
    )  # fmt: skip
    agent = Agent(cfg)
    agent.start()
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        wait_until(lambda: len(live.on("/detections")) >= 3, what="detections")
        assert all(len(m["detections"]) == 2 for m in live.on("/detections"))
        live.client.publish("edgegap/default/devices/cam-4/cmd", b"not json", qos=1)
        live.client.publish("edgegap/default/devices/cam-4/cmd", b'{"cmd": "reboot"}', qos=1)
        live.client.publish(
            "edgegap/default/devices/cam-4/cmd", b'{"cmd": "set_threshold", "value": 1.0}', qos=1
        )
        wait_until(lambda: len(live.on("/events")) >= 3, what="command acknowledged")
        events = live.on("/events")
        assert [(e.get("cmd"), e["ok"]) for e in events] == [
            (None, False),  # not JSON: refused, with the reason
            ("reboot", False),
            ("set_threshold", True),
        ]
        assert "not valid JSON" in events[0]["reason"] and "unknown command" in events[1]["reason"]
        seen = len(live.on("/detections"))
        wait_until(lambda: len(live.on("/detections")) >= seen + 5, what="more detections")
        assert live.on("/detections")[-1]["detections"] == []
    finally:
        agent.request_stop()
        thread.join(20)
    assert not thread.is_alive()


@pytest.mark.parametrize("rate", ["native", "all"])
def test_a_frame_whose_outputs_fail_is_skipped_and_serving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, rate: str
) -> None:
    """Decoding that raises on some frames (outputs a decoder cannot read, or a bug they hit)
    skips those frames only: the rest are published, and the failures are counted and logged
    once per run of them. At camera pace each frame is decoded on the inference thread (it is
    idle when the frame is due); in lockstep, on the post thread."""
    bundle = cached_bundle("ssd_postprocess")
    video = write_video(tmp_path / "clip.avi", 24, fps=50.0)
    out = tmp_path / "out.jsonl"
    overrides = {
        "bundle.path": str(bundle.path), "source.uri": str(video), "source.rate": rate,
        "outputs.jsonl": str(out),
    }  # fmt: skip
    clock = ManualClock()  # camera pace: a frame falls due when the last one is done
    monkeypatch.setattr(grabber_module, "SystemClock", lambda: clock)
    agent = Agent(load_config(None, overrides))
    agent.start()
    assert agent.pipeline is not None
    served = agent.pipeline.served
    decode, calls, bad = served.decoder, itertools.count(), {5, 6, 7, 15}

    class Flaky:
        roles = needed = needed_roles(decode)
        publishes_tensors = False

        def __call__(self, outputs: Any, transform: Any) -> Any:
            if next(calls) in bad:  # frames are decoded in order, one call each
                raise ValueError("outputs this decoder cannot read")
            return decode(outputs, transform)

    # handed over as a swapped-in model, which the pipeline takes before the first frame
    agent.pipeline.swap(dataclasses.replace(served, decoder=Flaky()))  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="agent.pipeline"):
        if rate == "native":
            stats = agent.pipeline.stats
            threading.Thread(
                target=step_through,
                args=(clock, 0.02, 25, lambda: stats.frames + stats.failed),
                daemon=True,
            ).start()
        summary = agent.run()
    assert summary.dropped == 0 and summary.frames == 20 and summary.failed == 4
    assert list(detections_by_frame(out)) == [i for i in range(24) if i not in bad]
    logged = [r.getMessage() for r in caplog.records]
    failed = [m for m in logged if "decoding or publishing failed" in m]
    assert [m.split(":")[0] for m in failed] == ["frame 5", "frame 15"]
    assert [m for m in logged if "work again" in m] == [
        "outputs work again after 3 failed frame(s)",
        "outputs work again after 1 failed frame(s)",
    ]
    assert agent.metrics.registry.get_sample_value("edgegap_failed_frames_total") == 4.0
    status = StatusMessage.model_validate(agent.status())
    assert status.failed == 4 and status.frames == 20
