"""`edgegap broker` (amqtt): a late subscriber gets retained releases and chunks; no client gets
retained messages it did not subscribe to (an amqtt 0.12.1 bug the embedded broker works around)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from brokers import amqtt_broker  # noqa: F401  (fixture)
from click.testing import CliRunner
from conftest import free_port
from paho.mqtt.enums import CallbackAPIVersion

pytest.importorskip("tensorflow")
pytest.importorskip("amqtt")

from publish_kit import bundle, retained  # noqa: E402

from agent.bundle.manifest import parse_manifest  # noqa: E402
from agent.updates.protocol import Limits, Topics, parse_release  # noqa: E402
from converter.cli import cli  # noqa: E402
from converter.embedded_broker import EmbeddedBroker  # noqa: E402

TOPICS = Topics("edgegap/default")


def test_publish_then_a_late_subscriber_gets_the_release_and_chunks(
    amqtt_broker: EmbeddedBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = bundle(tmp_path / "b", version=2)
    args = [
        "publish",
        str(path),
        "--broker",
        amqtt_broker.url,
        "--channel",
        "lab",
        "--chunk-size",
        "1024",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    raw = retained(amqtt_broker.host, amqtt_broker.port, TOPICS.release("lab"))[
        TOPICS.release("lab")
    ]
    release = parse_release(raw, Limits())
    assert release.manifest == parse_manifest((path / "manifest.json").read_bytes())
    sha = release.blob.sha256
    chunks = retained(amqtt_broker.host, amqtt_broker.port, f"edgegap/default/blobs/{sha}/+")
    assert json.loads(chunks.pop(TOPICS.blob_meta(sha)))["chunks"] == release.blob.chunks
    data = b"".join(chunks[TOPICS.chunk(sha, i)] for i in range(release.blob.chunks))
    assert data == (path / "model.tflite").read_bytes()
    # The channel's version is read back from the embedded broker too.
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "is not above it" in again.output


def _client(broker: EmbeddedBroker, got: list[str] | None = None) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if got is not None:
        lock = threading.Lock()

        def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
            with lock:
                got.append(msg.topic)

        client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_a_client_gets_no_retained_message_it_did_not_subscribe_to(
    amqtt_broker: EmbeddedBroker,  # noqa: F811
) -> None:
    publisher = _client(amqtt_broker)
    publisher.publish(
        TOPICS.device("cam-2", "status"), b'{"state": "online"}', qos=1, retain=True
    ).wait_for_publish(5)
    watcher = _client(amqtt_broker)  # like `edgegap fleet status`: holds devices/+/status
    watcher.subscribe(TOPICS.devices("status"), qos=1)
    time.sleep(0.3)
    got: list[str] = []
    device = _client(amqtt_broker, got)  # a device connecting: it subscribes only to its cmd
    device.subscribe(TOPICS.device("cam-1", "cmd"), qos=1)
    time.sleep(0.5)
    assert got == []  # amqtt 0.12.1 unpatched sends it cam-2's status (read as a command)
    late: list[str] = []
    subscriber = _client(amqtt_broker, late)
    subscriber.subscribe(TOPICS.devices("status"), qos=1)
    time.sleep(0.5)
    assert late == [TOPICS.device("cam-2", "status")]
    for c in (publisher, watcher, device, subscriber):
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_the_broker_command_serves_until_interrupted(stop_with: int) -> None:
    """Ctrl-C or a plain kill stops it cleanly, even when started with SIGINT ignored (as a shell
    script's background job is)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "converter", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
        broker = EmbeddedBroker("127.0.0.1", port)  # only for its host, port and url
        client = _client(broker)
        client.publish(
            "edgegap/default/models/lab/manifest", b"{}", qos=1, retain=True
        ).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        assert retained("127.0.0.1", port, "edgegap/default/models/+/manifest") == {
            "edgegap/default/models/lab/manifest": b"{}"
        }
    finally:
        proc.send_signal(stop_with)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and b"broker listening on mqtt://127.0.0.1" in out
    assert out.rstrip().endswith(b"stopping")


def test_the_agent_reports_through_the_embedded_broker(
    amqtt_broker: EmbeddedBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    from test_agent_kit import cached_bundle, write_video

    from agent.app import Agent
    from agent.config import load_config

    cfg = load_config(
        None,
        {
            "bundle.path": str(cached_bundle("yolo").path), "source.uri": str(write_video(tmp_path / "c.avi", 10)),
            "source.loop": True, "device_id": "lab-cam", "mqtt.broker": amqtt_broker.url,
        },
    )  # fmt: skip
    agent = Agent(cfg)
    agent.start()
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        assert agent.mqtt is not None and agent.mqtt.wait_connected(10)
        deadline = time.monotonic() + 20
        while agent.mqtt.published < 5:
            assert time.monotonic() < deadline, "no detections published through amqtt"
            time.sleep(0.05)
        result = CliRunner().invoke(
            cli, ["fleet", "status", "--broker", amqtt_broker.url, "--wait", "0", "--json"]
        )
        row = json.loads(result.output)
        assert (
            row["device_id"] == "lab-cam"
            and row["state"] == "online"
            and row["model"] == "grid-yolo"
        )
    finally:
        agent.request_stop()
        thread.join(20)
