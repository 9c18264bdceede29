"""The JSON the agent emits: per-frame detections and the retained device status.

The detections message is formatted straight from the frame's result; agent/outputs/schemas.py
holds the schemas of both messages (docs/schemas/), and tests validate emitted messages against them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

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
    tensors: dict[str, Any] | None = None  # the tensor decoder's outputs, by name


# One encoder for every message: json.dumps with options builds a new encoder on each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class DetectionsEncoder:
    """Writes a frame's detections message as JSON text, straight from the result.

    The message has a fixed shape, so it is formatted rather than built as a dict and handed to
    a JSON encoder: the constant parts (schema, device, fleet, model) are encoded once, with the
    json module, and each frame fills in only its numbers, with fixed decimals (box 0.1 px,
    score 4, latency 3, times 6). This runs on every frame's latency path, right after an invoke
    that has pushed Python's code and data out of the CPU caches, where it costs about half of
    the dict and json route (benchmarks/message_encode.py measures it).
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
                if d.keypoints is None:
                    parts.append(_BOX % row)
                else:
                    parts.append(_BOX_OPEN % row + _keypoints(d.keypoints) + "}")
            comma = ","
        if result.tensors is not None:
            parts.append('],"tensors":' + _ENCODER.encode(result.tensors))
        g, p, w, i, o = (t.get(s, 0.0) * 1000.0 for s in LATENCY_STAGES)
        tail = _TAIL if result.tensors is None else _TAIL_AFTER_TENSORS
        parts.append(tail % (g, p, w, i, o, g + p + w + i + o, sent))
        return "".join(parts).encode()

    def _label(self, label: str) -> str:
        text = _ENCODER.encode(label)
        if len(self._labels) < self.MAX_LABELS:
            self._labels[label] = text
        return text


# latency_ms holds every stage but publish, which cannot time itself; total is their sum
LATENCY_STAGES = tuple(s for s in STAGES if s != "publish")
_BOX_OPEN = '%s{"label":%s,"class_id":%d,"score":%.4f,"box":[%.1f,%.1f,%.1f,%.1f]'
_BOX = _BOX_OPEN + "}"
_NO_BOX = '%s{"label":%s,"class_id":%d,"score":%.4f,"box":null}'
_TAIL_AFTER_TENSORS = (
    ',"latency_ms":{"grab":%.3f,"pre":%.3f,"wait":%.3f,"invoke":%.3f,"post":%.3f,"total":%.3f},'
    '"sent":%.6f}'
)
_TAIL = "]" + _TAIL_AFTER_TENSORS  # closes the detections list


def _keypoints(values: tuple[float, ...]) -> str:
    """',"keypoints":[x, y, ...]' in source pixels, one decimal like the box."""
    if not all(math.isfinite(v) for v in values):
        raise ValueError("a keypoint is not a JSON number")
    return ',"keypoints":[' + ",".join(f"{v:.1f}" for v in values) + "]"


def _literal(text: str) -> str:
    """Text that %-formatting leaves as it is."""
    return text.replace("%", "%%")


def encode(payload: dict[str, Any]) -> bytes:
    return _ENCODER.encode(payload).encode()
