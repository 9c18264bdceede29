"""The config's sections other than the broker's: bundle, source, runtime, detection, local
outputs, the HTTP endpoints and the frame loop."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from agent.config.base import Strict as _Strict


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
    SYNTHETIC = "synthetic"  # frames made in memory, paced like a camera (benches, headless rigs)


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
        description=(
            "Camera index (0), video file, rtsp:// or http(s):// stream, a folder of images, "
            "or synthetic:640x480@30 (frames made in memory)."
        ),
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
    failed_after_frames: int = Field(
        default=10,
        ge=1,
        le=1_000_000,
        description=(
            "Health turns `failed` (and a `failed` event is published) when decoding or "
            "publishing fails this many frames in a row."
        ),
    )
    exit_after_failed_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "The agent exits non-zero (1) after this long in health `failed`, so systemd or the "
            "store's rollback can act; 0 exits at once."
        ),
    )
    prepare_on_grab: bool | None = Field(
        default=None,
        description=(
            "Make the model input on the grabber thread right after decoding, off the inference "
            "thread; empty: on when the CPU has more cores than interpreter threads."
        ),
    )
