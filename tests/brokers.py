"""Broker fixtures beyond conftest's plain mosquitto: the embedded amqtt broker, and mosquitto
with a password file and an ACL."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker, _mosquitto_binary, _spawn, free_port

from converter.embedded_broker import EmbeddedBroker


@pytest.fixture
def amqtt_broker() -> Iterator[EmbeddedBroker]:
    """`edgegap broker`'s embedded amqtt broker on a free loopback port."""
    pytest.importorskip("amqtt")
    broker = EmbeddedBroker("127.0.0.1", free_port()).start()
    yield broker
    broker.stop()


def mosquitto_passwd() -> str | None:
    return shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if Path("/usr/bin/mosquitto_passwd").exists() else None
    )


def start_acl_mosquitto(tmp_path: Path, acl: str, users: dict[str, str]) -> Broker:
    """mosquitto with anonymous clients refused, these users (name: password) and this ACL."""
    binary, passwd = _mosquitto_binary(), mosquitto_passwd()
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed (it comes with the mosquitto package)")
    passwords = tmp_path / "passwd"
    passwords.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run(
            [passwd, "-b", str(passwords), user, password], check=True, capture_output=True
        )
    (tmp_path / "acl").write_text(acl)
    port = free_port()
    config = tmp_path / "mosquitto-acl.conf"
    # As root, mosquitto drops to user mosquitto, who cannot read pytest's private tmp dirs.
    as_root = "user root\n" if os.geteuid() == 0 else ""
    config.write_text(
        f"{as_root}listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
        f"password_file {passwords}\nacl_file {tmp_path / 'acl'}\n"
    )
    return Broker("127.0.0.1", port, _spawn(config, port), config)
