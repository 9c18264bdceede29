"""The JSON the agent emits: per-frame detections and the retained device status.

Messages are built as plain dicts on the hot path; the pydantic models below are their schema
(docs/agent.md shows it as JSON Schema) and tests validate every emitted message against them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.decoders import Detection
from agent.grabber import Frame

logger = logging.getLogger(__name__)

DETECTIONS_SCHEMA = "edgegap.detections/1"
STATUS_SCHEMA = "edgegap.status/1"
STAGES = ("grab", "pre", "wait", "invoke", "post", "publish")


@dataclass
class ModelRef:
    name: str
    version: int
    sha256: str
    profile: str
    task: str


@dataclass
class FrameResult:
    """One processed frame on its way to the outputs."""

    frame: Frame
    detections: list[Detection]
    model: ModelRef
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    picked: float = 0.0  # perf_counter() when the inference thread took the frame


def detections_payload(
    result: FrameResult, device_id: str, fleet: str, sent: float
) -> dict[str, Any]:
    f, m = result.frame, result.model
    t = result.timings
    latency: dict[str, float] = {
        s: round(t[s] * 1000.0, 3) for s in ("grab", "pre", "wait", "invoke", "post") if s in t
    }
    latency["total"] = round(sum(latency.values()), 3)
    return {
        "schema": DETECTIONS_SCHEMA,
        "device_id": device_id,
        "fleet": fleet,
        "frame": {
            "index": f.index,
            "timestamp": round(f.timestamp, 6),
            "width": f.width,
            "height": f.height,
        },
        "model": {"name": m.name, "version": m.version, "task": m.task},
        "detections": [
            {
                "label": d.label,
                "class_id": d.class_id,
                "score": round(d.score, 4),
                "box": d.box.as_list() if d.box is not None else None,
            }
            for d in result.detections
        ],
        "latency_ms": latency,
        "sent": round(sent, 6),
    }


# One encoder for every message: json.dumps with options builds a new encoder on each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(payload: dict[str, Any]) -> bytes:
    return _ENCODER.encode(payload).encode()


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
    task: str = Field(description="detection or classification.")


class DetectionItem(_Schema):
    label: str = Field(description="Class label from the bundle's labels.")
    class_id: int = Field(ge=0, description="Class index as the model reports it.")
    score: float = Field(ge=0, le=1, description="Confidence.")
    box: list[float] | None = Field(
        min_length=4,
        max_length=4,
        description="[xmin, ymin, xmax, ymax] in source-frame pixels; null for classifiers.",
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
    latency_ms: Latency
    sent: float = Field(description="Time the message was built, Unix seconds.")


class BackendInfo(_Schema):
    name: str = Field(description="litert, tflite-runtime or tf.lite.")
    version: str
    amx: str = Field(description="Intel AMX for int8 kernels: in use, available, withheld or absent.")


class StatusModel(_Schema):
    name: str
    version: int = Field(ge=0)
    sha256: str
    profile: str


class StatusLatency(_Schema):
    p50: float | None = Field(
        description="Median end-to-end frame latency, ms, over recent frames."
    )
    p99: float | None = Field(description="99th percentile of the same.")


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
    health: Literal["starting", "ok", "degraded", "stopped"] | None = None
    model: StatusModel | None = None
    backend: BackendInfo | None = None
    source: str | None = None
    fps: float | None = None
    latency_ms: StatusLatency | None = None
    frames: int | None = Field(default=None, description="Frames processed since start.")
    dropped: int | None = Field(default=None, description="Frames dropped as stale since start.")


def schema_docs() -> str:
    """The JSON Schema blocks that docs/agent.md carries (tests check they are current)."""
    parts = []
    for model in (DetectionsMessage, StatusMessage):
        schema = json.dumps(model.model_json_schema(by_alias=True), indent=2, sort_keys=True)
        parts.append(f"```json\n{schema}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(schema_docs(), end="")
