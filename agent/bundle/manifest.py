"""The bundle manifest: everything a device needs to feed a model, read its outputs and trust it.

The manifest is the contract between the converter (which writes it) and the agent (which obeys it).
Its canonical JSON form is what gets signed; see docs/bundle-format.md.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.bounded_json import parse_object

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is small; anything bigger is refused before parsing
MAX_LABELS = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputRole(str, Enum):
    LOGITS = "logits"  # classifier scores before softmax
    PROBABILITIES = "probabilities"  # classifier scores after softmax
    BOXES = "boxes"  # SSD post-process: [1, N, 4] ymin, xmin, ymax, xmax in [0, 1]
    CLASSES = "classes"  # SSD post-process: [1, N] class index (float)
    SCORES = "scores"  # SSD post-process: [1, N]
    COUNT = "count"  # SSD post-process: [1] valid detections
    RAW_BOXES = "raw_boxes"  # raw SSD: [1, A, 4] box encodings against anchors
    RAW_SCORES = "raw_scores"  # raw SSD: [1, A, C] class logits/scores
    YOLO = "yolo"  # [1, N, 4 + C]: cx, cy, w, h then class scores
    TENSOR = "tensor"  # anything else, compared as a plain tensor


class Decoder(str, Enum):
    CLASSIFICATION = "classification"
    SSD_POSTPROCESS = "ssd_postprocess"
    SSD_RAW = "ssd_raw"
    YOLO = "yolo"
    TENSOR = "tensor"


class ColorOrder(str, Enum):
    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"


class ResizeMode(str, Enum):
    STRETCH = "stretch"
    LETTERBOX = "letterbox"


class ModelFile(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of model.tflite, hex.")
    size: int = Field(gt=0, description="Size of model.tflite in bytes.")


class InputSpec(_Strict):
    name: str = Field(default="", description="Tensor name, for people; the agent uses the index.")
    shape: list[int] = Field(
        min_length=2, max_length=5, description="Shape with batch, e.g. [1, 224, 224, 3]."
    )
    dtype: str = Field(description="int8, uint8, int16 or float32.")
    scale: float = Field(default=0.0, ge=0, description="Quantization scale; 0 for float tensors.")
    zero_point: int = Field(default=0, description="Quantization zero point.")
    color_order: ColorOrder = Field(default=ColorOrder.RGB)
    resize: ResizeMode = Field(default=ResizeMode.STRETCH)
    mean: list[float] = Field(
        min_length=1, description="Per-channel (or single) mean, in pixel units."
    )
    std: list[float] = Field(
        min_length=1, description="Per-channel (or single) std, in pixel units."
    )

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: list[float]) -> list[float]:
        if any(s == 0 for s in v):
            raise ValueError("std must be non-zero")
        return v


class OutputSpec(_Strict):
    name: str = Field(description="Tensor name recorded at conversion time.")
    index: int = Field(
        ge=0, description="Tensor index in the interpreter: the stable way to find it."
    )
    role: OutputRole
    shape: list[int]
    dtype: str
    scale: float = Field(default=0.0, ge=0)
    zero_point: int = 0


class Golden(_Strict):
    """Deterministic inputs (from a seed; see agent.bundle.golden) with expected outputs, dequantized."""

    seed: int = Field(ge=0, description="Seed of the pixel generator.")
    count: int = Field(ge=1, le=16, description="How many inputs.")
    expected: list[list[str]] = Field(
        description="Per input, per output: base64 of float32 little-endian values."
    )
    atol: list[float] = Field(description="Per output absolute tolerance, in dequantized units.")


class Signature(_Strict):
    algorithm: str = Field(default="ed25519")
    key_id: str = Field(
        pattern=r"^[0-9a-f]{16}$", description="First 16 hex digits of sha256(raw public key)."
    )
    value: str = Field(
        description="base64 of the 64-byte Ed25519 signature over the canonical manifest."
    )


class Manifest(_Strict):
    format: int = Field(default=FORMAT_VERSION, description="Bundle format version.")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Model name.")
    version: int = Field(ge=0, description="Monotonic version within a channel.")
    profile: str = Field(description="Device profile the bundle was built and checked for.")
    created: str = Field(description="ISO 8601 UTC creation time.")
    task: str = Field(description="classification, detection or tensor.")
    decoder: Decoder
    model: ModelFile
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1, max_length=16)
    labels: list[str] = Field(default_factory=list, max_length=MAX_LABELS)
    golden: Golden | None = None
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Measured at conversion time."
    )
    gates: dict[str, Any] = Field(
        default_factory=dict, description="Gate results; 'passed' is the verdict."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Decoder parameters, e.g. anchors config."
    )
    signature: Signature | None = None

    @property
    def channel(self) -> str:
        return f"{self.name}@{self.profile}"

    def output(self, role: OutputRole) -> OutputSpec:
        for o in self.outputs:
            if o.role is role:
                return o
        raise KeyError(f"manifest has no output with role {role.value}")

    def canonical_bytes(self) -> bytes:
        """The bytes that are signed: every field but the signature, keys sorted, no whitespace."""
        body = self.model_dump(mode="json", exclude={"signature"})
        return canonical_json(body)

    def to_json(self) -> str:
        return (
            json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True)
            + "\n"
        )


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def parse_manifest(raw: bytes | str) -> Manifest:
    """Parse and validate manifest JSON; raises ValueError with a readable reason."""
    data = raw.encode() if isinstance(raw, str) else raw
    obj = parse_object(data, MAX_MANIFEST_BYTES, "manifest")
    if obj.get("format") not in (None, FORMAT_VERSION):
        raise ValueError(
            f"unsupported bundle format {obj.get('format')!r}; this agent reads {FORMAT_VERSION}"
        )
    try:
        return Manifest.model_validate(obj)
    except Exception as exc:  # pydantic.ValidationError
        raise ValueError(f"manifest does not validate: {exc}") from exc
