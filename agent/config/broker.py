"""Broker settings: the MQTT connection (URL, TLS, credentials, topics) and what is published."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from agent.config.base import ConfigError
from agent.config.base import Strict as _Strict

logger = logging.getLogger(__name__)

DEFAULT_PASSWORD_ENV = "EDGEGAP_MQTT_PASSWORD"


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None


def password_from(path: Path | None, env: str, max_bytes: int | None = None) -> str | None:
    """The first line of the password file at path, else $env; None when neither is set.

    Raises OSError when the file cannot be read, ValueError when it is over max_bytes.
    """
    if path is None:
        return os.environ.get(env) or None
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise ValueError(f"{path} is too large to be a password file")
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0] if lines else ""


def parse_broker_url(url: str) -> BrokerAddress:
    """mqtt://[user@]host[:port] or mqtts://...; a password in the URL is refused (it is a secret)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
    if parts.password is not None:
        raise ValueError(
            "broker URL must not carry a password; set EDGEGAP_MQTT_PASSWORD or mqtt.password_file"
        )
    if not parts.hostname:
        raise ValueError(f"broker URL has no host: {url!r}")
    if parts.path not in ("", "/"):
        raise ValueError(f"broker URL takes no path: {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ValueError(f"broker URL has a bad port: {url!r}") from exc
    return BrokerAddress(parts.hostname, port, tls, parts.username or None)


class TLSConfig(_Strict):
    ca_file: Path | None = Field(
        default=None, description="CA bundle for the broker; empty uses the system store."
    )
    cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(default=None, description="Client private key (mutual TLS).")
    insecure: bool = Field(
        default=False, description="Skip broker hostname checks. For lab use only."
    )


class MqttConfig(_Strict):
    broker: str | None = Field(
        default=None,
        description="mqtt://[user@]host[:port] or mqtts://...; empty means local outputs only.",
    )
    username: str | None = Field(
        default=None, description="Broker user name (or give it in the broker URL)."
    )
    password_env: str = Field(
        default=DEFAULT_PASSWORD_ENV,
        description="Environment variable that holds the broker password.",
    )
    password_file: Path | None = Field(
        default=None,
        description="File whose first line is the broker password (e.g. a systemd credential).",
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id; empty uses edgegap-<device_id>."
    )
    topic_prefix: str | None = Field(
        default=None, description="Topic prefix; empty uses edgegap/<fleet>."
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive.")
    qos: int = Field(
        default=0, ge=0, le=1, description="QoS of detection messages (status is always QoS 1)."
    )
    status_interval_s: float = Field(
        default=10.0, gt=0, description="How often the retained status is refreshed."
    )
    tls: TLSConfig = Field(
        default_factory=TLSConfig, description="TLS settings for mqtts:// brokers."
    )

    password: str | None = Field(
        default=None,
        exclude=True,
        description="Not accepted: secrets come from password_env or password_file, never from YAML.",
    )

    @field_validator("password")
    @classmethod
    def _no_secrets(cls, v: str | None) -> None:
        if v is not None:
            raise ValueError(
                f"secrets are not read from the config file; set {DEFAULT_PASSWORD_ENV} or mqtt.password_file"
            )
        return None

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str | None) -> str | None:
        if v:
            parse_broker_url(v)
        return v or None

    def read_password(self) -> str | None:
        """The broker password from password_file, else from the environment; None when neither."""
        try:
            return password_from(self.password_file, self.password_env)
        except OSError as exc:
            raise ConfigError(
                [f"mqtt.password_file: cannot read {self.password_file}: {exc.strerror}"]
            ) from exc


class PublishMode(str, Enum):
    EVERY = "every"  # every processed frame
    INTERVAL = "interval"  # at most one message per interval_s
    ON_CHANGE = "on_change"  # when the set of detections changes, plus a heartbeat


class PublishConfig(_Strict):
    mode: PublishMode = Field(
        default=PublishMode.EVERY, description="When detections are published over MQTT."
    )
    interval_s: float = Field(
        default=1.0, gt=0, description="interval mode: seconds between messages."
    )
    change_iou: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="on_change: a box that overlaps its last published self less than this moved.",
    )
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="on_change: publish at least this often anyway."
    )
