"""The agent's configuration: a YAML file validated by pydantic, overridable key by key from flags.

Unknown keys are errors. Secrets (the MQTT password) never live in the YAML: they come from an
environment variable or a file named here.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

DEFAULT_PASSWORD_ENV = "EDGEGAP_MQTT_PASSWORD"
_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None


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


class ConfigError(EdgegapError, ValueError):
    """A config that cannot be read or does not validate; one `key.path: reason` per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GoldenPolicy(str, Enum):
    REQUIRE = "require"  # a bundle without a golden check is refused
    CHECK = "check"  # run it when present, warn when absent
    SKIP = "skip"  # never run it (not recommended)


class BundleConfig(_Strict):
    path: Path | None = Field(
        default=None, description="Bundle directory holding model.tflite and manifest.json."
    )
    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="Ed25519 public keys (PEM). When given, unsigned or foreign-signed bundles are refused.",
    )
    golden: GoldenPolicy = Field(
        default=GoldenPolicy.CHECK,
        description="Whether the bundle's golden check must pass before serving.",
    )


class SourceKind(str, Enum):
    AUTO = "auto"
    CAMERA = "camera"
    FILE = "file"
    STREAM = "stream"
    IMAGES = "images"


class Rate(str, Enum):
    AUTO = "auto"  # file: native; images: all; camera/stream: max
    NATIVE = "native"  # pace a file or image folder at its frame rate, like a camera
    MAX = "max"  # read as fast as possible; the newest frame wins, stale ones are dropped
    ALL = "all"  # lockstep: every frame is processed, none dropped (offline evaluation)


class ReconnectConfig(_Strict):
    initial_s: float = Field(
        default=0.5, gt=0, description="First wait before reopening a lost camera or stream."
    )
    max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between reopen attempts (doubling backoff)."
    )
    max_attempts: int = Field(
        default=0,
        ge=0,
        description="Give up after this many failed reopen attempts in a row; 0 retries forever.",
    )


class SourceConfig(_Strict):
    uri: str | None = Field(
        default=None,
        description="Camera index (0), video file, rtsp:// or http(s):// stream, or a folder of images.",
    )
    kind: SourceKind = Field(
        default=SourceKind.AUTO, description="How to read uri; auto decides from its form."
    )
    loop: bool = Field(
        default=False,
        description="Restart a video file or image folder at its end instead of stopping.",
    )
    rate: Rate = Field(
        default=Rate.AUTO, description="Frame pacing for files and folders: native, max or all."
    )
    fps: float | None = Field(
        default=None,
        gt=0,
        description="Frame rate for native pacing when the source has none (image folders: 10).",
    )
    width: int | None = Field(default=None, gt=0, description="Requested camera capture width.")
    height: int | None = Field(default=None, gt=0, description="Requested camera capture height.")
    open_timeout_s: float = Field(default=10.0, gt=0, description="Stream open timeout.")
    read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Stream read timeout: silence longer than this is a dropout.",
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Reopen backoff for cameras and streams."
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _index_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class RuntimeConfig(_Strict):
    backend: str | None = Field(
        default=None,
        description="litert, tflite-runtime or tf.lite; empty picks the first that imports.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Interpreter threads; empty takes the bundle profile's value, at most one per CPU.",
    )
    fold_bgr: bool = Field(
        default=True,
        description=(
            "For a model that takes RGB: reverse the input channels of its first convolutions when "
            "it loads, so frames go in as OpenCV reads them (BGR) with no swap per frame. Exact; "
            "done only where the graph allows it, and checked by the golden check (docs/agent.md)."
        ),
    )


class DetectionConfig(_Strict):
    score_threshold: float = Field(
        default=0.5, ge=0, le=1, description="Detections below this score are dropped."
    )
    max_detections: int = Field(
        default=100, ge=1, le=10_000, description="At most this many detections per frame."
    )
    top_k: int = Field(
        default=5, ge=1, le=1000, description="Classifiers: how many classes to report."
    )


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
        if self.password_file is not None:
            try:
                lines = self.password_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    [f"mqtt.password_file: cannot read {self.password_file}: {exc.strerror}"]
                ) from exc
            return lines[0] if lines else ""
        return os.environ.get(self.password_env) or None


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


class OutputsConfig(_Strict):
    jsonl: Path | None = Field(
        default=None, description="Append every frame's detection JSON to this file."
    )
    annotated_dir: Path | None = Field(
        default=None, description="Write frames with boxes drawn (JPEG) here."
    )
    annotated_every: int = Field(
        default=1, ge=1, description="Write one annotated frame in this many."
    )


class HttpConfig(_Strict):
    enabled: bool = Field(default=False, description="Serve this endpoint.")
    bind: str = Field(
        default="127.0.0.1", description="Address to listen on (0.0.0.0 for every interface)."
    )
    port: int = Field(default=0, ge=0, le=65535, description="TCP port; 0 picks a free one.")


class MetricsConfig(HttpConfig):
    bind: str = Field(
        default="0.0.0.0", description="Address to listen on; Prometheus scrapes from outside."
    )
    port: int = Field(
        default=9108, ge=0, le=65535, description="TCP port of /metrics; 0 picks a free one."
    )


class PreviewConfig(HttpConfig):
    port: int = Field(
        default=8090, ge=0, le=65535, description="TCP port of the MJPEG page; 0 picks a free one."
    )
    max_fps: float = Field(
        default=10.0, gt=0, le=60, description="Frames per second sent to each viewer."
    )
    jpeg_quality: int = Field(
        default=80, ge=10, le=100, description="JPEG quality of preview frames."
    )


class PipelineConfig(_Strict):
    max_frames: int = Field(
        default=0, ge=0, description="Stop after this many processed frames; 0 runs until stopped."
    )
    overlap_post: bool = Field(
        default=True, description="Decode and publish frame N while frame N+1 is inferred."
    )
    prepare_on_grab: bool | None = Field(
        default=None,
        description=(
            "Make the model input on the grabber thread right after decoding, off the inference "
            "thread; empty: on when the CPU has more cores than interpreter threads."
        ),
    )
    inline_reads: bool = Field(
        default=True,
        description=(
            "While the model easily keeps up with a paced or live source, read frames on the "
            "inference thread (no thread hand-off per frame); the grabber thread takes over "
            "again as soon as the model falls behind."
        ),
    )
    prewarm_ms: float = Field(
        default=2.0,
        ge=0.0,
        le=50.0,
        description=(
            "While frames are read inline, redo the last frame's pre- and post-processing on "
            "scratch buffers this many ms before the next frame is due (a paced file's schedule, "
            "or a live source's measured interval), so the new frame's own pass runs on warm "
            "caches. It costs one such pass of CPU per frame; 0 turns it off."
        ),
    )


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
        if self.bundle.path is None:
            missing.append("bundle.path: required (or --bundle DIR)")
        if not self.source.uri:
            missing.append("source.uri: required (or --source URI)")
        if missing:
            raise ConfigError(missing)


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
