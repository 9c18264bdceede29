"""The JSON the agent emits: per-frame detections and the retained device status.

Messages are built as plain dicts on the hot path; the pydantic models below are their schema
(docs/agent.md shows it as JSON Schema) and tests validate every emitted message against them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.decoders.base import Detection
from agent.sources.grabber import Frame

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


# One encoder for every message: json.dumps with options builds a new encoder on each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class DetectionsEncoder:
    """Writes a frame's detections message as JSON text, straight from the result.

    The message has a fixed shape, so it is formatted rather than built as a dict and handed to
    a JSON encoder: the constant parts (schema, device, fleet, model) are encoded once, with the
    json module, and each frame fills in only its numbers, with fixed decimals (box 0.1 px,
    score 4, latency 3, times 6). This runs on every frame's latency path, right after an invoke
    that has pushed Python's code and data out of the CPU caches, where it costs about half of
    the dict and json route (benchmarks/message_encode.py; docs/agent.md, "Performance").
    Strings (labels included) still go through the json module's encoder, so escaping is its own.
    A non-finite number raises ValueError, as that encoder does (allow_nan=False).
    """

    MAX_LABELS = 1024  # label strings kept encoded; class ids come from the model, so bound them

    def __init__(self, device_id: str, fleet: str, model: ModelRef) -> None:
        json_text = _ENCODER.encode
        head = json_text({"schema": DETECTIONS_SCHEMA, "device_id": device_id, "fleet": fleet})
        info = json_text({"name": model.name, "version": model.version, "task": model.task})
        self._head = (
            _literal(head[:-1])
            + ',"frame":{"index":%d,"timestamp":%.6f,"width":%d,"height":%d},"model":'
            + _literal(info)
            + ',"detections":['
        )
        self._labels: dict[str, str] = {}

    def __call__(self, result: FrameResult, sent: float) -> bytes:
        f, t = result.frame, result.timings
        parts = [self._head % (f.index, f.timestamp, f.width, f.height)]
        comma = ""
        for d in result.detections:
            label = self._labels.get(d.label) or self._label(d.label)
            b = d.box
            if b is None:
                if not math.isfinite(d.score):
                    raise ValueError(f"detection score {d.score} is not a JSON number")
                parts.append(_NO_BOX % (comma, label, d.class_id, d.score))
            else:
                if not math.isfinite(d.score + b.xmin + b.ymin + b.xmax + b.ymax):
                    raise ValueError(f"detection {d} has a value that is not a JSON number")
                row = (comma, label, d.class_id, d.score, b.xmin, b.ymin, b.xmax, b.ymax)
                parts.append(_BOX % row)
            comma = ","
        g, p, w, i, o = (t.get(s, 0.0) * 1000.0 for s in LATENCY_STAGES)
        parts.append(_TAIL % (g, p, w, i, o, g + p + w + i + o, sent))
        return "".join(parts).encode()

    def _label(self, label: str) -> str:
        text = _ENCODER.encode(label)
        if len(self._labels) < self.MAX_LABELS:
            self._labels[label] = text
        return text


# latency_ms holds every stage but publish, which cannot time itself; total is their sum
LATENCY_STAGES = tuple(s for s in STAGES if s != "publish")
_BOX = '%s{"label":%s,"class_id":%d,"score":%.4f,"box":[%.1f,%.1f,%.1f,%.1f]}'
_NO_BOX = '%s{"label":%s,"class_id":%d,"score":%.4f,"box":null}'
_TAIL = (
    '],"latency_ms":{"grab":%.3f,"pre":%.3f,"wait":%.3f,"invoke":%.3f,"post":%.3f,"total":%.3f},'
    '"sent":%.6f}'
)


def _literal(text: str) -> str:
    """Text that %-formatting leaves as it is."""
    return text.replace("%", "%%")


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


class StatusModel(_Schema):
    name: str
    version: int = Field(ge=0)
    sha256: str
    profile: str
    color_swap: Literal["folded", "per frame", "none"] | None = Field(
        default=None,
        description=(
            "How BGR frames reach an RGB model: the swap folded into its first convolutions at "
            "load (runtime.fold_bgr), or done on every frame; none for a BGR or gray model."
        ),
    )


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
    failed: int | None = Field(
        default=None,
        description="Frames whose decoding or publishing failed since start; each was skipped.",
    )
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
