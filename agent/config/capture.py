"""The config's `capture` section: which frames the device keeps for the host to learn from,
how many, at what size, and where they wait while the broker is away (docs/agent.md, "Capture")."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from agent.config.base import Strict

# Like a model chunk (agent.updates.protocol.DEFAULT_CHUNK_SIZE): fits a 128 KB broker limit.
CAPTURE_CHUNK_SIZE = 124 * 1024


class CapturePolicy(Strict):
    """Which frames are worth learning from, and how many may go out. The `capture policy`
    command replaces any of these keys at run time."""

    band: tuple[float, float] = Field(
        default=(0.3, 0.6),
        description=(
            "Capture a frame whose top detection score falls in [low, high): the model is unsure. "
            "Scores under detection.score_threshold are not seen, so lower it to see the whole band."
        ),
    )
    flicker: bool = Field(
        default=True,
        description="Capture a frame where a label appears for one frame only, or vanishes for one.",
    )
    sample_rate: float = Field(
        default=0.01, ge=0, le=1, description="Capture this fraction of all frames at random."
    )
    max_per_minute: int = Field(
        default=6, ge=0, le=600, description="At most this many captures in any 60 s."
    )
    max_bytes_per_day: int = Field(
        default=50 * 1024 * 1024,
        ge=0,
        description="At most this many JPEG bytes captured in any 24 h.",
    )

    @field_validator("band")
    @classmethod
    def _band_in_order(cls, band: tuple[float, float]) -> tuple[float, float]:
        low, high = band
        if not 0 <= low < high <= 1:
            raise ValueError(f"must be [low, high] with 0 <= low < high <= 1, got {list(band)}")
        return band


class CaptureConfig(Strict):
    enabled: bool = Field(
        default=False,
        description="Capture frames (needs mqtt.broker); the `capture on|off` commands switch it.",
    )
    policy: CapturePolicy = Field(
        default_factory=CapturePolicy, description="Which frames, and the rate caps."
    )
    max_side: int = Field(
        default=640,
        ge=32,
        le=8192,
        description="Frames are scaled down so their longer side is at most this many pixels.",
    )
    jpeg_quality: int = Field(default=85, ge=10, le=100, description="JPEG quality of captures.")
    queue: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Frames waiting to be encoded; one more is dropped (and counted), never waited for.",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Where captures wait for the broker; empty: <updates.state_dir>/captures.",
    )
    spool_max_files: int = Field(
        default=200, ge=1, description="Captures kept waiting at most; the oldest go first."
    )
    spool_max_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Bytes kept waiting at most."
    )
    chunk_size: int = Field(
        default=CAPTURE_CHUNK_SIZE,
        ge=1024,
        le=8 * 1024 * 1024,
        description="A capture bigger than this goes out in parts of this size.",
    )
    drift_window_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="The drift statistics in the status cover this many seconds (on even when capture is off).",
    )
