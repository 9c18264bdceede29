"""The agent's configuration: a YAML file validated by pydantic, overridable key by key from flags.

Unknown keys are errors. Secrets (the MQTT password) never live in the YAML: they come from an
environment variable or a file named here. The sections live beside this file: broker.py (MQTT
and publishing), sections.py (everything else); base.py holds the error type and strict base.
"""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from agent.config.base import ConfigError
from agent.config.base import Strict as _Strict
from agent.config.broker import (
    DEFAULT_PASSWORD_ENV,
    BrokerAddress,
    MqttConfig,
    PublishConfig,
    PublishMode,
    TLSConfig,
    parse_broker_url,
)
from agent.config.capture import CaptureConfig, CapturePolicy
from agent.config.sections import (
    BundleConfig,
    DetectionConfig,
    GoldenPolicy,
    MetricsConfig,
    OutputsConfig,
    PipelineConfig,
    PreviewConfig,
    Rate,
    ReconnectConfig,
    RuntimeConfig,
    SourceConfig,
    SourceKind,
)
from agent.config.updates import UpdatesConfig

logger = logging.getLogger(__name__)

_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

__all__ = [
    "DEFAULT_PASSWORD_ENV",
    "AgentConfig",
    "BrokerAddress",
    "BundleConfig",
    "CaptureConfig",
    "CapturePolicy",
    "ConfigError",
    "DetectionConfig",
    "GoldenPolicy",
    "MetricsConfig",
    "MqttConfig",
    "OutputsConfig",
    "PipelineConfig",
    "PreviewConfig",
    "PublishConfig",
    "PublishMode",
    "Rate",
    "ReconnectConfig",
    "RuntimeConfig",
    "SourceConfig",
    "SourceKind",
    "TLSConfig",
    "UpdatesConfig",
    "load_config",
    "parse_broker_url",
]


class AgentConfig(_Strict):
    """Everything `edgegap-agent run` needs. See docs/agent.md for a commented example."""

    device_id: str = Field(
        default_factory=lambda: _sanitize(socket.gethostname()),
        description="This device's id in topics; defaults to the host name.",
    )
    fleet: str = Field(
        default="default", description="Fleet name: the second level of every topic."
    )
    bundle: BundleConfig = Field(
        default_factory=BundleConfig, description="Which bundle to serve and whom to trust."
    )
    source: SourceConfig = Field(
        default_factory=SourceConfig, description="Where frames come from."
    )
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="Interpreter backend and threads."
    )
    detection: DetectionConfig = Field(
        default_factory=DetectionConfig, description="Decoder thresholds."
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection; optional.")
    publish: PublishConfig = Field(
        default_factory=PublishConfig, description="MQTT detection publishing policy."
    )
    outputs: OutputsConfig = Field(default_factory=OutputsConfig, description="Local outputs.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus /metrics endpoint."
    )
    preview: PreviewConfig = Field(
        default_factory=PreviewConfig, description="MJPEG preview page with boxes drawn."
    )
    pipeline: PipelineConfig = Field(
        default_factory=PipelineConfig, description="Frame loop settings."
    )
    updates: UpdatesConfig = Field(
        default_factory=UpdatesConfig, description="Model updates over MQTT and the bundle store."
    )
    capture: CaptureConfig = Field(
        default_factory=CaptureConfig, description="Frames captured for the host to learn from."
    )

    @field_validator("device_id", "fleet")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        if not _TOPIC_LEVEL.match(v):
            raise ValueError(
                "must be 1-64 letters, digits, '.', '_' or '-' (it becomes an MQTT topic level)"
            )
        return v

    def require_runnable(self) -> None:
        """`run` needs a bundle and a source; validate-config accepts partial files."""
        missing = []
        if self.bundle.path is None and not self.updates.channel:
            missing.append("bundle.path: required (or --bundle DIR), unless updates.channel is set")
        if not self.source.uri:
            missing.append("source.uri: required (or --source URI)")
        if missing:
            raise ConfigError(missing)
        if self.updates.channel and not self.mqtt.broker:
            raise ConfigError(["updates.channel: needs mqtt.broker (or --broker URL)"])
        if self.capture.enabled and not self.mqtt.broker:
            raise ConfigError(["capture.enabled: needs mqtt.broker (or --broker URL)"])


def _sanitize(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]", "-", name).strip("-.") or "device"
    return clean[:64]


def format_errors(err: ValidationError) -> list[str]:
    """One `key.path: reason (got value)` line per pydantic error."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = str(e["msg"]).removeprefix("Value error, ")
        got = e.get("input")
        secret = any("password" in str(p) for p in e["loc"])
        quiet = secret or isinstance(got, dict | list) or e["type"] == "missing" or repr(got) in msg
        shown = "" if quiet else f" (got {got!r})"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            shown = ""
        lines.append(f"{where}: {msg}{shown}")
    return lines


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set data['a']['b'] = value for dotted 'a.b', creating sections as needed."""
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(
            [f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}"]
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the config must be a YAML mapping, got {type(data).__name__}"])
    return data


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read the YAML file (if any), apply dotted-key overrides from flags, and validate."""
    data = read_config_file(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        set_path(data, dotted, value)
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from exc
    return config
