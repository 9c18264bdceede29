"""The mosquitto ACL of docs/deployment.md, read from the doc: a device cannot publish a release
or chunks, the publisher can, and each device writes only its own topics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")

from brokers import Broker, start_acl_mosquitto  # noqa: E402
from publish_kit import bundle, publish_raw  # noqa: E402

from agent.updates.protocol import Topics  # noqa: E402
from converter.cli import cli  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
TOPICS = Topics("edgegap/default")
USERS = {"publisher": "pub-secret", "cam-1": "cam-1-secret", "cam-2": "cam-2-secret"}


def acl_from_doc() -> str:
    blocks = re.findall(r"```\n(.*?)```", DOC.read_text(), re.S)
    acl = [b for b in blocks if b.startswith("# /etc/mosquitto/edgegap.acl")]
    assert len(acl) == 1, "docs/deployment.md has one ACL block"
    return acl[0]


def _retained_as(broker: object, user: str, topic_filter: str) -> dict[str, bytes]:
    import threading
    import time

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with lock:
            got[msg.topic] = bytes(msg.payload)

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.username_pw_set(user, USERS[user])
    client.on_message = on_message
    client.connect(broker.host, broker.port)  # type: ignore[attr-defined]
    client.loop_start()
    client.subscribe(topic_filter, qos=1)
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()
    return got


def _as_device(broker: Broker, topic: str, payload: bytes) -> None:
    publish_raw(broker.host, broker.port, topic, payload, "cam-1", USERS["cam-1"])


def _device_cannot_publish(broker: Broker, args: list[str]) -> None:
    """A device's credentials: the broker acknowledges, drops, and publish says so."""
    device_env = {"EDGEGAP_MQTT_USERNAME": "cam-1", "EDGEGAP_MQTT_PASSWORD": USERS["cam-1"]}
    denied = CliRunner().invoke(cli, args, env=device_env)
    assert denied.exit_code == 1 and "does not hold it" in denied.output, denied.output
    _as_device(broker, TOPICS.chunk("a" * 64, 0), b"evil")
    _as_device(broker, TOPICS.release("lobby"), b"{}")
    assert _retained_as(broker, "publisher", "edgegap/#") == {}


def _publisher_publishes(broker: Broker, args: list[str], tmp_path: Path) -> None:
    """The publisher's credentials, password from a file; a device reads releases and chunks."""
    (tmp_path / "pw").write_text(USERS["publisher"] + "\n")
    ok = CliRunner().invoke(
        cli,
        [*args, "--password-file", str(tmp_path / "pw")],
        env={"EDGEGAP_MQTT_USERNAME": "publisher"},
    )
    assert ok.exit_code == 0, ok.output
    seen = _retained_as(broker, "cam-1", "edgegap/default/#")
    assert TOPICS.release("lobby") in seen and len([t for t in seen if "/blobs/" in t]) == 4


def _device_writes_only_its_own_status(broker: Broker) -> None:
    _as_device(broker, TOPICS.device("cam-1", "status"), b'{"a":1}')
    _as_device(broker, TOPICS.device("cam-2", "status"), b'{"a":2}')
    statuses = _retained_as(broker, "publisher", TOPICS.devices("status"))
    assert statuses == {TOPICS.device("cam-1", "status"): b'{"a":1}'}


def test_only_the_publisher_writes_releases_and_chunks(tmp_path: Path) -> None:
    broker = start_acl_mosquitto(tmp_path, acl_from_doc(), USERS)
    try:
        path = bundle(tmp_path / "b", version=1)
        args = ["publish", str(path), "--broker", broker.url, "--channel", "lobby",
                "--chunk-size", "1024"]  # fmt: skip
        _device_cannot_publish(broker, args)
        _publisher_publishes(broker, args, tmp_path)
        _device_writes_only_its_own_status(broker)
        # No credentials at all: refused in one line.
        anon = CliRunner().invoke(
            cli, args, env={"EDGEGAP_MQTT_USERNAME": "", "EDGEGAP_MQTT_PASSWORD": ""}
        )
        assert anon.exit_code == 1 and "refused the connection" in anon.output, anon.output
    finally:
        broker.stop()
