"""The capture message on devices/<id>/captures, shared by the agent and `edgegap collect`.

One capture is one JPEG and its metadata. It travels as one or more MQTT messages (parts), each
a header line of JSON, a newline, then the part's bytes of the JPEG. Every part carries the same
header but for `part`; the JPEG's `size` and `sha256` let the receiver check the whole image.
docs/protocol.md ("Captures") describes the same thing. Everything read is bounded first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.decoders.base import Detection
from agent.outputs.messages import ModelRef

logger = logging.getLogger(__name__)

CAPTURE_SCHEMA = "edgegap.capture/1"
MAX_HEADER_BYTES = 64 * 1024
MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_PARTS = 1024
MAX_DETECTIONS = 100  # the top-scoring ones are kept


class CaptureError(ValueError):
    """A capture message that does not follow the format; the text says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaptureModel(_Strict):
    name: str = Field(max_length=256)
    version: int = Field(ge=0)
    sha256: str = Field(max_length=64)


class CaptureDetection(_Strict):
    label: str = Field(max_length=256)
    class_id: int
    score: float = Field(ge=0, le=1)
    box: list[float] | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description="[xmin, ymin, xmax, ymax] in the pixels of the captured image.",
    )


class CaptureImage(_Strict):
    format: Literal["jpeg"] = "jpeg"
    width: int = Field(gt=0, le=16384)
    height: int = Field(gt=0, le=16384)
    size: int = Field(gt=0, le=MAX_IMAGE_BYTES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CaptureHeader(_Strict):
    schema_: Literal["edgegap.capture/1"] = Field(alias="schema", default="edgegap.capture/1")
    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$", description="Unique per device.")
    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    ts: float = Field(description="Capture time of the frame, Unix seconds.")
    reason: Literal["uncertain", "flicker", "sample"]
    model: CaptureModel
    detections: list[CaptureDetection] = Field(max_length=MAX_DETECTIONS)
    image: CaptureImage
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, ge=1, le=MAX_PARTS)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _parts_fit(self) -> CaptureHeader:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of {self.parts}")
        return self


def detections_for(detections: Sequence[Detection], scale: float) -> list[CaptureDetection]:
    """The frame's detections (the best MAX_DETECTIONS) with boxes scaled to the captured image."""
    best = sorted(detections, key=lambda d: d.score, reverse=True)[:MAX_DETECTIONS]
    out = []
    for d in best:
        box = None
        if d.box is not None:
            b = d.box
            box = [round(v * scale, 1) for v in (b.xmin, b.ymin, b.xmax, b.ymax)]
        score = round(min(max(float(d.score), 0.0), 1.0), 4)
        out.append(CaptureDetection(label=d.label, class_id=d.class_id, score=score, box=box))
    return out


def make_header(
    capture_id: str,
    device_id: str,
    ts: float,
    reason: str,
    model: ModelRef,
    detections: list[CaptureDetection],
    jpeg: bytes,
    size: tuple[int, int],
) -> CaptureHeader:
    """size: (width, height) of the JPEG."""
    return CaptureHeader.model_validate({
        "id": capture_id, "device_id": device_id, "ts": round(ts, 3), "reason": reason,
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "detections": [d.model_dump() for d in detections],
        "image": {"width": size[0], "height": size[1], "size": len(jpeg),
                  "sha256": hashlib.sha256(jpeg).hexdigest()},
    })  # fmt: skip


def header_line(header: CaptureHeader) -> bytes:
    return json.dumps(header.model_dump(mode="json", by_alias=True), separators=(",", ":")).encode()


def split(header: CaptureHeader, jpeg: bytes, chunk_size: int) -> list[bytes]:
    """The MQTT payloads of one capture: each the header line, a newline, then a part."""
    parts = max(1, math.ceil(len(jpeg) / chunk_size))
    if parts > MAX_PARTS:
        raise CaptureError(f"{len(jpeg)} bytes in parts of {chunk_size} is over {MAX_PARTS} parts")
    out = []
    for i in range(parts):
        head = header_line(header.model_copy(update={"part": i, "parts": parts}))
        out.append(head + b"\n" + jpeg[i * chunk_size : (i + 1) * chunk_size])
    return out


def parse_part(raw: bytes) -> tuple[CaptureHeader, bytes]:
    """One payload's header and bytes; raises CaptureError with the reason."""
    end = raw.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if end < 0:
        raise CaptureError(f"no header line within {MAX_HEADER_BYTES} bytes")
    try:
        obj: Any = json.loads(raw[:end])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaptureError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("schema") != CAPTURE_SCHEMA:
        schema = obj.get("schema") if isinstance(obj, dict) else None
        raise CaptureError(f"unknown capture schema {schema!r}")
    try:
        header = CaptureHeader.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "header"
        raise CaptureError(f"header does not validate: {where}: {first['msg']}") from exc
    return header, raw[end + 1 :]
