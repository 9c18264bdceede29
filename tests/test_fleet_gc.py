"""`edgegap fleet status|events` and `edgegap gc` against a real mosquitto."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

pytest.importorskip("tensorflow")

from conftest import Broker  # noqa: E402
from publish_kit import bundle, publish_raw, retained  # noqa: E402

from agent.updates.protocol import EventKind, Topics, event  # noqa: E402
from converter.cli import cli  # noqa: E402

TOPICS = Topics("edgegap/default")


def run(*args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def status(device: str, sha: str, version: int, state: str = "online") -> bytes:
    return json.dumps(
        {
            "schema": "edgegap.status/1",
            "state": state,
            "device_id": device,
            "fleet": "default",
            "agent_version": "0.1.0",
            "health": "ok",
            "model": {"name": "tiny", "version": version, "sha256": sha, "profile": "x86-avx2"},
            "fps": 29.5,
            "latency_ms": {"p50": 4.25, "p99": 9.5},
        }
    ).encode()


def published_sha(broker: Broker, channel: str, path: Path) -> str:
    result = run(
        "publish", path, "--broker", broker.url, "--channel", channel, "--chunk-size", 1024
    )
    assert result.exit_code == 0, result.output
    raw = retained(broker.host, broker.port, TOPICS.release(channel))[TOPICS.release(channel)]
    return str(json.loads(raw)["blob"]["sha256"])


def test_fleet_status_shows_a_device_from_its_retained_status(
    mosquitto: Broker, tmp_path: Path
) -> None:
    sha = published_sha(mosquitto, "lobby", bundle(tmp_path / "b", version=4))
    publish_raw(
        mosquitto.host, mosquitto.port, TOPICS.device("cam-1", "status"), status("cam-1", sha, 4)
    )
    publish_raw(
        mosquitto.host,
        mosquitto.port,
        TOPICS.device("cam-2", "status"),
        status("cam-2", "0" * 64, 1, "offline"),
    )
    result = run("fleet", "status", "--broker", mosquitto.url, "--wait", 0)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "cam-1" in x)
    for cell in ("online", "tiny v4", "lobby", "ok", "29.5", "4.2 ms", "9.5 ms"):
        assert cell in line, (cell, line)
    assert "offline" in next(x for x in result.output.splitlines() if "cam-2" in x)
    as_json = run("fleet", "status", "--broker", mosquitto.url, "--wait", 0, "--json")
    rows = [json.loads(x) for x in as_json.output.splitlines()]
    assert [r["device_id"] for r in rows] == ["cam-1", "cam-2"]
    assert rows[0]["channel"] == "lobby" and rows[0]["version"] == 4 and rows[1]["channel"] == ""


def _send_events_soon(broker: Broker, events: list[dict[str, Any]]) -> threading.Thread:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    def send() -> None:
        time.sleep(0.8)  # after the CLI has subscribed
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        client.connect(broker.host, broker.port)
        client.loop_start()
        for e in events:
            client.publish(
                TOPICS.device(e["device_id"], "events"), json.dumps(e), qos=1
            ).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_fleet_events_prints_the_events_seen_in_the_window(mosquitto: Broker) -> None:
    sent = [
        event(EventKind.AVAILABLE, "cam-1", time.time(), version=5, channel="lobby"),
        event(
            EventKind.REJECTED, "cam-2", time.time(), version=5, reason="profile rpi4 not accepted"
        ),
    ]
    thread = _send_events_soon(mosquitto, sent)
    result = run("fleet", "events", "--broker", mosquitto.url, "--wait", 2.5, "--json")
    thread.join()
    assert result.exit_code == 0, result.output
    assert [json.loads(x) for x in result.output.splitlines()] == sent
    thread = _send_events_soon(mosquitto, sent[1:])
    table = run("fleet", "status", "--broker", mosquitto.url, "--wait", 2.5)
    thread.join()
    assert "rejected v5: profile rpi4 not accepted" in table.output


def test_gc_clears_an_unused_blob_and_keeps_used_ones(mosquitto: Broker, tmp_path: Path) -> None:
    old = published_sha(mosquitto, "lobby", bundle(tmp_path / "v1", version=1, model=b"old" * 1000))
    held = published_sha(
        mosquitto, "lobby", bundle(tmp_path / "v2", version=2, model=b"held" * 1000)
    )
    current = published_sha(mosquitto, "lobby", bundle(tmp_path / "v3", version=3))
    other = published_sha(
        mosquitto, "dock", bundle(tmp_path / "d1", version=1, model=b"dock" * 1000)
    )
    publish_raw(
        mosquitto.host,
        mosquitto.port,
        TOPICS.device("cam-1", "status"),
        status("cam-1", held, 2, "offline"),
    )

    dry = run("gc", "--channel", "lobby", "--broker", mosquitto.url, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would clear" in dry.output and "current release of lobby" in dry.output
    assert "used by device cam-1" in dry.output
    assert TOPICS.blob_meta(old) in retained(mosquitto.host, mosquitto.port, TOPICS.blob_metas())

    result = run("gc", "--channel", "lobby", "--broker", mosquitto.url)
    assert result.exit_code == 0, result.output
    assert "cleared 1 blobs" in result.output and "kept 2" in result.output
    for sha, kept in ((old, False), (held, True), (current, True), (other, True)):
        left = retained(mosquitto.host, mosquitto.port, f"edgegap/default/blobs/{sha}/+", wait=0.5)
        assert bool(left) is kept, sha
    assert (
        len(retained(mosquitto.host, mosquitto.port, f"edgegap/default/blobs/{held}/+")) == 5
    )  # 4000 bytes: 4 chunks of 1024, and the meta
