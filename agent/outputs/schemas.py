"""The JSON Schema of the agent's MQTT messages: per-frame detections and the retained status.

docs/schemas/ holds them as files generated from these models (`python -m agent.outputs.schemas`);
a test fails when the files drift from the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrameInfo(_Schema):
    index: int = Field(
        ge=0, description="Frame number since the source was opened, dropped frames included."
    )
    timestamp: float = Field(description="Capture time, Unix seconds.")
    width: int = Field(gt=0, description="Source frame width in pixels.")
    height: int = Field(gt=0, description="Source frame height in pixels.")


class ModelInfo(_Schema):
    name: str = Field(description="Bundle model name.")
    version: int = Field(ge=0, description="Bundle version.")
    task: str = Field(description="detection, classification or tensor.")


class DetectionItem(_Schema):
    label: str = Field(description="Class label from the bundle's labels.")
    class_id: int = Field(ge=0, description="Class index as the model reports it.")
    score: float = Field(ge=0, le=1, description="Confidence.")
    box: list[float] | None = Field(
        min_length=4,
        max_length=4,
        description="[xmin, ymin, xmax, ymax] in source-frame pixels; null for classifiers.",
    )
    keypoints: list[float] | None = Field(
        default=None,
        description="x, y pairs in source-frame pixels (ssd_raw with extra_values); else absent.",
    )


class TensorValue(_Schema):
    shape: list[int] = Field(description="The output's shape.")
    values: list[float] | None = Field(
        default=None, description="Every value, dequantized, row-major (small outputs)."
    )
    min: float | None = Field(default=None, description="Smallest value (large outputs).")
    max: float | None = Field(default=None, description="Largest value (large outputs).")
    argmax: list[int] | None = Field(
        default=None, description="Index of the largest value into shape (large outputs)."
    )


class Latency(_Schema):
    grab: float = Field(ge=0, description="Reading and decoding the frame, ms.")
    pre: float = Field(ge=0, description="Resize, color order, normalize and quantize, ms.")
    wait: float = Field(ge=0, description="Time the prepared frame waited for the model, ms.")
    invoke: float = Field(ge=0, description="Interpreter invoke, ms.")
    post: float = Field(ge=0, description="Reading outputs and decoding detections, ms.")
    total: float = Field(
        ge=0, description="Sum of the stages above: capture to decoded detections, ms."
    )


class DetectionsMessage(_Schema):
    """Published to edgegap/<fleet>/devices/<id>/detections and written to the JSONL file."""

    schema_: Literal["edgegap.detections/1"] = Field(
        alias="schema", description="Schema id and version."
    )
    device_id: str
    fleet: str
    frame: FrameInfo
    model: ModelInfo
    detections: list[DetectionItem]
    tensors: dict[str, TensorValue] | None = Field(
        default=None,
        description="Decoder tensor only: each output by name, in full or summarized.",
    )
    latency_ms: Latency
    sent: float = Field(description="Time the message was built, Unix seconds.")


class BackendInfo(_Schema):
    name: str = Field(description="litert, tflite-runtime or tf.lite.")
    version: str


class StatusModel(_Schema):
    name: str
    version: int = Field(ge=0)
    sha256: str
    profile: str
    color_swap: Literal["per frame", "none"] | None = Field(
        default=None,
        description=(
            "per frame: an RGB model gets each BGR frame's channels swapped in pre-processing; "
            "none: a BGR or gray model (`edgegap convert --fold-bgr` makes one)."
        ),
    )


class StatusLatency(_Schema):
    p50: float | None = Field(
        description="Median end-to-end frame latency, ms, over recent frames."
    )
    p99: float | None = Field(description="99th percentile of the same.")


class StatusDrift(_Schema):
    """Rolling statistics of the model serving now, over the last window_s seconds."""

    window_s: float = Field(description="Length of the window, seconds (capture.drift_window_s).")
    frames: int = Field(ge=0, description="Frames in the window (0: the values below are 0).")
    version: int | None = Field(default=None, description="Model version the window is about.")
    top_score_mean: float = Field(description="Mean of each frame's top score (0 for none).")
    top_score_p10: float = Field(description="10th percentile of the same.")
    detections_per_frame: float = Field(description="Mean number of detections per frame.")


class StatusCaptures(_Schema):
    enabled: bool = Field(description="Capturing now (capture.enabled, `capture on|off`).")
    sent: int = Field(ge=0, description="Captures the broker acknowledged since start.")
    dropped: int = Field(
        ge=0, description="Captures lost since start: queue full, or oldest out of the spool."
    )
    waiting: int = Field(ge=0, description="Captures in the spool, waiting for the broker.")
    capped: int = Field(ge=0, description="Frames picked but held back by a rate cap.")
    bytes_24h: int = Field(ge=0, description="JPEG bytes captured in the last 24 h.")


class StatusMessage(_Schema):
    """Retained on edgegap/<fleet>/devices/<id>/status; the last will sets state offline."""

    schema_: Literal["edgegap.status/1"] = Field(alias="schema")
    state: Literal["online", "offline"]
    device_id: str
    fleet: str
    agent_version: str
    ts: float | None = Field(
        default=None, description="Time of this status, Unix seconds; absent in the last will."
    )
    reason: str | None = Field(
        default=None, description="Offline only: shutdown, or lost (the last will)."
    )
    health: Literal["starting", "ok", "degraded", "failed", "stopped"] | None = Field(
        default=None,
        description="failed: the decoder failed pipeline.failed_after_frames frames in a row.",
    )
    channel: str | None = Field(
        default=None, description="The model channel the device follows (updates.channel)."
    )
    model: StatusModel | None = None
    backend: BackendInfo | None = None
    source: str | None = None
    fps: float | None = None
    latency_ms: StatusLatency | None = None
    frames: int | None = Field(default=None, description="Frames processed since start.")
    failed: int | None = Field(
        default=None,
        description="Frames whose decoding or publishing failed since start; each was skipped.",
    )
    dropped: int | None = Field(default=None, description="Frames dropped as stale since start.")
    drift: StatusDrift | None = Field(
        default=None, description="Score and detection statistics (drift signal); with a broker."
    )
    captures: StatusCaptures | None = Field(
        default=None, description="Frame capture counters; with a broker."
    )


SCHEMAS: dict[str, type[BaseModel]] = {
    "detections.json": DetectionsMessage,
    "status.json": StatusMessage,
}


def schema_files() -> dict[str, str]:
    """docs/schemas/<name> -> its JSON Schema text, as generated from the models above."""
    return {
        name: json.dumps(model.model_json_schema(by_alias=True), indent=2, sort_keys=True) + "\n"
        for name, model in SCHEMAS.items()
    }


def main(argv: list[str]) -> None:
    """python -m agent.outputs.schemas [DIR]: write the schema files (default docs/schemas)."""
    out = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "docs" / "schemas"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in schema_files().items():
        (out / name).write_text(text)
        print(out / name)


if __name__ == "__main__":
    main(sys.argv[1:])
