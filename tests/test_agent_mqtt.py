"""MQTT over TLS with a user name and password, on a real mosquitto configured for it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker, _spawn, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_agent_kit import cached_bundle, write_video

from agent.app import Agent
from agent.config import load_config
from agent.outputs.schemas import StatusMessage

PASSWORD = "s3cret-for-tests"


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    """mosquitto with a TLS listener (a CA made here) and a password file; no anonymous access."""
    if shutil.which("mosquitto_passwd") is None or not (
        shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()
    ):
        pytest.skip("mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")
    ca_key, srv_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _cert("edgegap test CA", ca_key, None, ca_key, ca=True)
    srv = _cert("127.0.0.1", srv_key, ca.subject, ca_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    _write_key(srv_key, tmp_path / "server.key")
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwd), "cam", PASSWORD], check=True, capture_output=True
    )
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    # As root, mosquitto would drop to its own user, which cannot read files in pytest's tmp dir.
    as_root = "user root\n" if os.geteuid() == 0 else ""
    config.write_text(
        f"{as_root}listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\npersistence false\n"
        f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}\n"
    )
    broker = Broker("127.0.0.1", port, _spawn(config, port), config)
    yield broker, tmp_path / "ca.pem"
    broker.stop()


def _agent(broker: Broker, ca: Path, video: Path, password_file: Path) -> Agent:
    cfg = load_config(
        None,
        {
            "bundle.path": str(cached_bundle("yolo").path), "source.uri": str(video), "source.loop": True,
            "device_id": "tls-cam", "mqtt.broker": f"mqtts://cam@127.0.0.1:{broker.port}",
            "mqtt.tls.ca_file": str(ca), "mqtt.password_file": str(password_file),
        },
    )  # fmt: skip
    return Agent(cfg)


def _serve(agent: Agent) -> threading.Thread:
    agent.start()
    thread = threading.Thread(target=agent.run)
    thread.start()
    return thread


def test_tls_and_password(tls_broker: tuple[Broker, Path], tmp_path: Path) -> None:
    broker, ca = tls_broker
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    agent = _agent(broker, ca, write_video(tmp_path / "clip.avi", 10), secret)
    thread = _serve(agent)
    try:
        assert agent.mqtt is not None and agent.mqtt.wait_connected(10)
        deadline = time.monotonic() + 20
        while agent.mqtt.published < 5:
            assert time.monotonic() < deadline, "no detections published over TLS"
            time.sleep(0.05)
        status = StatusMessage.model_validate(agent.status())
        assert status.state == "online" and status.health == "ok"
    finally:
        agent.request_stop()
        thread.join(20)


def test_refused_credentials_are_not_connected_and_inference_goes_on(
    tls_broker: tuple[Broker, Path], tmp_path: Path
) -> None:
    broker, ca = tls_broker
    secret = tmp_path / "wrong"
    secret.write_text("not-the-password\n")
    agent = _agent(broker, ca, write_video(tmp_path / "clip.avi", 10), secret)
    thread = _serve(agent)
    try:
        assert agent.mqtt is not None and agent.pipeline is not None
        deadline = time.monotonic() + 20
        while agent.pipeline.stats.frames < 30:
            assert time.monotonic() < deadline, "inference stalled while the broker refuses us"
            time.sleep(0.05)
        assert not agent.mqtt.connected and agent.mqtt.published == 0 and agent.mqtt.dropped > 0
    finally:
        agent.request_stop()
        thread.join(20)
    assert not thread.is_alive()


def test_the_device_and_the_host_turn_nagle_off(mosquitto: Broker) -> None:
    """A pull sends a PUBACK, an UNSUBSCRIBE and a SUBSCRIBE per chunk, all small. With Nagle on,
    each waited for the broker's delayed ACK: a 30 MB model took 1.3 s to pull on loopback
    instead of 0.1 s (benchmarks/update.py)."""
    from agent.config import MqttConfig
    from agent.mqtt import MqttLink
    from converter.broker_client import BrokerOptions, Connection

    link = MqttLink(MqttConfig(broker=mosquitto.url), "cam-nd", "test", lambda: {"state": "x"})
    link.start()
    try:
        assert link.wait_connected(10)
        sock = link.client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        link.stop(None)
    with Connection(BrokerOptions(mosquitto.url), "test") as conn:
        sock = conn.client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
