"""Capture against a real mosquitto and a real agent: the commands, a broker outage the on-disk
ring rides out, and `edgegap collect` turning a device's captures into a dataset folder."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from conftest import Broker
from test_agent_kit import cached_bundle, write_video
from updates_kit import DEVICE, Mqtt, running_agent, wait_until

from agent.capture.message import parse_part
from agent.outputs.schemas import StatusMessage
from converter.cli import cli
from converter.tasks.detection_folder import read_folder


def capture_config(broker: Broker, tmp: Path, **overrides: Any) -> dict[str, Any]:
    """An agent on the kit's moving squares (30 fps, looping), capturing every frame it may."""
    video = tmp / "clip.avi"
    if not video.exists():
        write_video(video, 24)
    keys = {
        "bundle.path": str(cached_bundle("yolo").path),
        "source.uri": str(video), "source.loop": True,
        "mqtt.broker": broker.url, "device_id": DEVICE, "fleet": "test",
        "mqtt.status_interval_s": 0.5, "metrics.enabled": False,
        "capture.spool_dir": str(tmp / "spool"), "capture.chunk_size": 1024,
        "capture.policy.sample_rate": 1.0, "capture.policy.max_per_minute": 600,
        # Only the random sample: which frames flicker depends on which ones a busy machine drops.
        "capture.policy.flicker": False, "capture.policy.band": [0.0, 0.01],
    }  # fmt: skip
    keys.update(overrides)
    return keys


def captures(kit: Mqtt) -> list[tuple[Any, bytes]]:
    with kit._lock:
        raw = [p for t, p in kit.messages if t.endswith("/captures")]
    return [parse_part(p) for p in raw]


def test_capture_commands_switch_it_and_refuse_bad_policies(
    mosquitto: Broker, tmp_path: Path
) -> None:
    kit = Mqtt(mosquitto)
    try:
        keys = capture_config(mosquitto, tmp_path)
        keys.update({"metrics.enabled": True, "metrics.port": 0, "metrics.bind": "127.0.0.1"})
        with running_agent(keys) as agent:
            wait_until(lambda: agent.status()["drift"]["frames"] > 5, 30, "frames")
            assert captures(kit) == []  # off by default
            kit.command({"cmd": "capture", "action": "on"})
            kit.wait_event("command", cmd="capture", ok=True)
            wait_until(lambda: len(captures(kit)) >= 3, 30, "captures")
            header, _ = captures(kit)[0]
            assert header.device_id == DEVICE and header.reason == "sample"
            assert header.model.version == agent.served.manifest.version  # type: ignore[union-attr]
            assert header.parts > 1  # a JPEG over capture.chunk_size goes in parts
            wait_until(lambda: _metric(agent, 'edgegap_captures{state="sent"}') >= 3, 10, "metric")
            assert 0 < _metric(agent, 'edgegap_drift{stat="top_score_mean"}') <= 1

            kit.command({"cmd": "capture", "action": "policy", "policy": {"sample_rate": 2}})
            refused = kit.wait_event("command", cmd="capture", ok=False)
            assert "sample_rate" in refused["reason"]
            kit.command(b'{"cmd": "capture", "action": "sideways"}')
            wait_until(
                lambda: sum(e["event"] == "command" and not e["ok"] for e in kit.events()) == 2,
                10,
                "the second refusal",
            )
            assert agent.capture is not None
            assert agent.capture.selector.policy.sample_rate == 1.0  # nothing changed

            kit.command({"cmd": "capture", "action": "policy", "policy": {"sample_rate": 0}})
            wait_until(lambda: agent.capture.selector.policy.sample_rate == 0, 10, "policy")  # type: ignore[union-attr]
            kit.command({"cmd": "capture", "action": "off"})
            wait_until(lambda: not kit.status()["captures"]["enabled"], 10, "status says off")
            status = kit.status()
            StatusMessage.model_validate(status)
            assert status["captures"]["sent"] >= 3
            assert set(status["drift"]) >= {
                "window_s", "frames", "top_score_mean", "top_score_p10", "detections_per_frame"
            }  # fmt: skip
            assert status["drift"]["detections_per_frame"] > 0
    finally:
        kit.close()
    reasons = [e.get("reason", "") for e in kit.events() if e["event"] == "command"]
    assert any("capture needs an action" in r for r in reasons)


def _metric(agent: Any, name: str) -> float:
    """A sample's value from the agent's /metrics page (-1 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics.port}/metrics") as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return -1.0


def test_captures_wait_in_the_ring_while_the_broker_is_away(
    mosquitto: Broker, tmp_path: Path
) -> None:
    keys = capture_config(mosquitto, tmp_path, **{"capture.enabled": True})
    keys["capture.policy.max_per_minute"] = 120
    with running_agent(keys) as agent:
        capturer = agent.capture
        assert capturer is not None
        wait_until(lambda: capturer.sent >= 2, 30, "captures sent")
        mosquitto.stop()
        wait_until(lambda: capturer.ring is not None and len(capturer.ring) >= 5, 30, "spooled")
        assert capturer.status()["captures"]["waiting"] >= 5
        spooled = {parse_part(p.read_bytes())[0].id for p in (tmp_path / "spool").glob("*.cap")}
        sent_before = capturer.sent
        mosquitto.start()
        kit = Mqtt(mosquitto)
        try:
            wait_until(lambda: capturer.sent >= sent_before + len(spooled), 60, "spool drained")
            received = {h.id for h, _ in captures(kit)}
            # The agent waits >= 1 s to reconnect, the kit subscribes at once; allow one anyway.
            assert len(spooled - received) <= 1, (sorted(spooled), sorted(received))
        finally:
            kit.close()


def test_collect_writes_a_dataset_from_captures_sent_while_it_was_away(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """With --session the broker keeps the captures sent between two runs of collect."""
    out = tmp_path / "captures"
    base = ["collect", "--broker", mosquitto.url, "--fleet", "test", "--out", str(out),
            "--session", "lab", "--max-distance", "0"]  # fmt: skip
    first = CliRunner().invoke(cli, [*base, "--duration", "0.3"])
    assert first.exit_code == 0, first.output
    with running_agent(capture_config(mosquitto, tmp_path, **{"capture.enabled": True})) as agent:
        capturer = agent.capture
        assert capturer is not None
        wait_until(lambda: capturer.sent >= 8, 30, "captures sent")
    second = CliRunner().invoke(cli, [*base, "--until", "3", "--duration", "30"])
    assert second.exit_code == 0, second.output
    assert "3 new" in second.output
    folder = read_folder(out)
    assert len(folder) == 3 and folder.image(0).shape[:2] == (240, 320)
    doc = json.loads((out / "annotations.json").read_text())
    entry = doc["images"][0]
    assert entry["provenance"]["device_id"] == DEVICE
    assert entry["provenance"]["reason"] == "sample"
    assert entry["provenance"]["model"]["version"] == 1
    assert entry["device_detections"] and doc["annotations"] == []


def test_collect_reports_a_shortfall_and_bad_folders(mosquitto: Broker, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["collect", "--broker", mosquitto.url, "--fleet", "test"]
    r = runner.invoke(
        cli, [*base, "--out", str(tmp_path / "a"), "--until", "1", "--duration", "0.5"]
    )
    assert r.exit_code == 1 and "only 0 of 1 new image(s) arrived within 0.5 s" in r.output
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("x")
    r = runner.invoke(cli, [*base, "--out", str(tmp_path / "b"), "--duration", "0.5"])
    assert r.exit_code == 1 and "not empty" in r.output
    r = runner.invoke(cli, [*base, "--out", str(tmp_path / "c"), "--session", "a/b"])
    assert r.exit_code == 2 and "Invalid value for --session" in r.output
