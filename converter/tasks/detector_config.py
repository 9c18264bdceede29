"""A Keras SSD detector's description, kept in a JSON sidecar next to the .keras file.

`model.keras` is accompanied by `model.detector.json`: input size and normalization, class
names, the anchor grid, the box coder and the NMS settings of the post-processing op. Everything
that exports, converts, evaluates or decodes the detector reads it from here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import EdgegapError
from agent.geometry.anchors import AnchorConfig
from agent.geometry.boxes import BoxCoder

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".detector.json"
SIDECAR_FORMAT = 1


class SidecarError(EdgegapError, ValueError):
    """The detector sidecar is missing or malformed."""


@dataclass(frozen=True)
class NmsConfig:
    """Attributes of the TFLite_Detection_PostProcess op (fast NMS unless use_regular_nms)."""

    max_detections: int = 20
    max_classes_per_detection: int = 1
    nms_score_threshold: float = 0.05
    nms_iou_threshold: float = 0.5
    use_regular_nms: bool = False
    coder: BoxCoder = field(default_factory=BoxCoder)


@dataclass(frozen=True)
class DetectorConfig:
    input_size: int = 192
    width: float = 0.5
    classes: tuple[str, ...] = ("digit", "circle", "triangle", "square")
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    nms: NmsConfig = field(default_factory=NmsConfig)
    mean: float = 0.0  # input = (pixel - mean) / std, RGB pixels 0..255; the bundle default
    std: float = 255.0
    color_order: str = "rgb"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        nms = asdict(self.nms)
        return {
            "format": SIDECAR_FORMAT,
            "kind": "ssd",
            "input_size": self.input_size,
            "width": self.width,
            "classes": list(self.classes),
            "background_class": False,
            "anchors": self.anchors.to_dict(),
            "num_anchors": self.anchors.count,
            "box_coder": nms.pop("coder"),
            "nms": nms,
            "normalization": {"mean": self.mean, "std": self.std, "color_order": self.color_order},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        if d.get("format") != SIDECAR_FORMAT or d.get("kind") != "ssd":
            raise ValueError(
                f"unsupported detector sidecar (format {d.get('format')!r}, kind {d.get('kind')!r})"
            )
        norm = d["normalization"]
        cfg = cls(
            input_size=int(d["input_size"]),
            width=float(d["width"]),
            classes=tuple(str(c) for c in d["classes"]),
            anchors=AnchorConfig.from_dict(d["anchors"]),
            nms=NmsConfig(**d["nms"], coder=BoxCoder(**d["box_coder"])),
            mean=float(norm["mean"]),
            std=float(norm["std"]),
            color_order=str(norm.get("color_order", "rgb")),
        )
        if int(d.get("num_anchors", cfg.anchors.count)) != cfg.anchors.count:
            raise ValueError("num_anchors does not match the anchor grid")
        return cfg


def sidecar_path(model_path: Path) -> Path:
    """model.keras -> model.detector.json (same folder, same stem)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + SIDECAR_SUFFIX)


def has_sidecar(model_path: Path) -> bool:
    return sidecar_path(model_path).is_file()


def write_sidecar(
    model_path: Path, cfg: DetectorConfig, extra: dict[str, Any] | None = None
) -> Path:
    path = sidecar_path(model_path)
    path.write_text(json.dumps({**cfg.to_dict(), **(extra or {})}, indent=2) + "\n")
    return path


def read_sidecar(model_path: Path) -> tuple[DetectorConfig, dict[str, Any]]:
    """The config and the whole sidecar document (training record, measured metrics)."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise SidecarError(
            f"{model_path} has no detector sidecar {path.name} (written by `edgegap zoo train-detector`)"
        )
    try:
        doc = json.loads(path.read_text())
        return DetectorConfig.from_dict(doc), doc
    except (ValueError, KeyError, TypeError) as exc:
        raise SidecarError(f"{path} is not a valid detector sidecar: {exc}") from exc
