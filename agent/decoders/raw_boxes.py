"""What ssd_raw reads from manifest.extra: the box coding and the anchors.

Box codings (one row of raw_boxes = 4 box values, then `extra_values` keypoint values):
  yxhw  (ty, tx, th, tw) against anchors (ycenter, xcenter, h, w), sizes through exp, each value
        divided by its scale first (box_scales [y, x, h, w], default 10, 10, 5, 5: the TF Object
        Detection API's faster_rcnn_box_coder); keypoints are (y, x) pairs decoded like the center.
  xywh  (x, y, w, h) offsets with linear sizes (MediaPipe-style), divided by box_scales
        [x, y, w, h]; with box_units `anchor` (default) they are in units of the anchor's size,
        with `input` in model-input pixels (the scales default to the input's width and height and
        the anchor's size is not used); keypoints are (x, y) pairs decoded like the center.
Anchors: `anchors` (a list of [ycenter, xcenter, h, w] or an anchor-grid mapping), `anchor_grid`
(a mapping), `anchor_generator` (SSD anchor-generator parameters, agent.geometry.anchors.ssd_anchors)
or `anchor_data` (the float32 array of a .npy file, carried in the manifest as base64 with its
sha256, so it is covered by the signature and travels with the manifest; never a file name).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.decoders.base import DecoderError
from agent.geometry.anchors import MAX_ANCHORS, grid_anchors, ssd_anchors

logger = logging.getLogger(__name__)

CODINGS = ("yxhw", "xywh")
DEFAULT_SCALES = {"yxhw": (10.0, 10.0, 5.0, 5.0), "xywh": (1.0, 1.0, 1.0, 1.0)}


@dataclass(frozen=True)
class BoxCoding:
    coding: str  # yxhw or xywh
    scales: tuple[float, float, float, float]  # in the coding's own order
    units: str  # anchor or input (xywh only)
    extra_values: int  # keypoint values after the 4 box values

    @property
    def width(self) -> int:
        return 4 + self.extra_values

    def decode(self, enc: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """[K, 4 + E] rows against [K, 4] anchors -> ([K, 4] xyxy, [K, E/2, 2] x, y or None),
        normalized to the model input."""
        e = enc.astype(np.float64)
        ya, xa, ha, wa = anchors.astype(np.float64).T
        s = self.scales
        kp = e[:, 4:].reshape(len(e), -1, 2) if self.extra_values else None
        if self.coding == "yxhw":
            yc, xc = e[:, 0] / s[0] * ha + ya, e[:, 1] / s[1] * wa + xa
            h, w = np.exp(e[:, 2] / s[2]) * ha, np.exp(e[:, 3] / s[3]) * wa
            if kp is not None:
                kp = np.stack(
                    [kp[..., 1] / s[1] * wa[:, None] + xa[:, None],
                     kp[..., 0] / s[0] * ha[:, None] + ya[:, None]], axis=-1,
                )  # fmt: skip
        else:
            if self.units == "input":
                ha, wa = np.ones_like(ha), np.ones_like(wa)
            xc, yc = e[:, 0] / s[0] * wa + xa, e[:, 1] / s[1] * ha + ya
            w, h = e[:, 2] / s[2] * wa, e[:, 3] / s[3] * ha
            if kp is not None:
                kp = np.stack(
                    [kp[..., 0] / s[0] * wa[:, None] + xa[:, None],
                     kp[..., 1] / s[1] * ha[:, None] + ya[:, None]], axis=-1,
                )  # fmt: skip
        boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
        return boxes.astype(np.float32), None if kp is None else kp.astype(np.float32)


def box_coding(extra: Mapping[str, Any], in_w: int, in_h: int) -> BoxCoding:
    """The box coding manifest.extra describes, checked."""
    coding = str(extra.get("box_coding", "yxhw"))
    if coding not in CODINGS:
        raise DecoderError(f"ssd_raw: box_coding must be yxhw or xywh, got {coding!r}")
    units = str(extra.get("box_units", "anchor"))
    if units not in ("anchor", "input"):
        raise DecoderError(f"ssd_raw: box_units must be anchor or input, got {units!r}")
    if coding == "xywh" and units == "input":
        default: tuple[float, ...] = (float(in_w), float(in_h), float(in_w), float(in_h))
    else:
        default = DEFAULT_SCALES[coding]
    scales = _scales(extra, coding, default)
    if any(v == 0 for v in scales):
        raise DecoderError("ssd_raw: box_scales must be non-zero")
    extra_values = extra.get("extra_values", 0)
    if not isinstance(extra_values, int) or extra_values < 0 or extra_values % 2:
        raise DecoderError(
            f"ssd_raw: extra_values must be an even count (keypoints are pairs), got {extra_values!r}"
        )
    return BoxCoding(coding, scales, units, extra_values)


def _scales(
    extra: Mapping[str, Any], coding: str, default: tuple[float, ...]
) -> tuple[float, float, float, float]:
    if "box_scales" in extra:
        try:
            values = tuple(float(v) for v in extra["box_scales"])
        except (TypeError, ValueError) as exc:
            raise DecoderError(f"ssd_raw: box_scales must be 4 numbers: {exc}") from exc
        if len(values) != 4:
            raise DecoderError(
                f"ssd_raw: box_scales needs 4 values ({', '.join(coding)}), got {len(values)}"
            )
        return values[0], values[1], values[2], values[3]
    named = extra.get("box_coder") or {}  # {y_scale, x_scale, h_scale, w_scale}, as before
    if coding == "yxhw" and isinstance(named, Mapping):
        keys = ("y_scale", "x_scale", "h_scale", "w_scale")
        return tuple(float(named.get(k, d)) for k, d in zip(keys, default, strict=True))  # type: ignore[return-value]
    return default[0], default[1], default[2], default[3]


def anchors_from(extra: Mapping[str, Any]) -> np.ndarray:
    """(A, 4) float32 anchors (ycenter, xcenter, h, w) from whichever form extra gives."""
    try:
        if "anchor_data" in extra:
            return _anchor_data(extra["anchor_data"])
        if "anchor_generator" in extra:
            return ssd_anchors(extra["anchor_generator"])
        given = extra.get("anchors", extra.get("anchor_grid"))
        if isinstance(given, Mapping):
            return grid_anchors(given)
        if given is not None:
            return np.asarray(given, np.float32).reshape(-1, 4)
    except (ValueError, KeyError, TypeError) as exc:
        raise DecoderError(f"ssd_raw: bad anchors: {exc}") from exc
    raise DecoderError(
        "ssd_raw needs anchors in manifest.extra: anchors, anchor_grid, anchor_generator or "
        "anchor_data"
    )


def anchor_data(anchors: np.ndarray) -> dict[str, Any]:
    """The manifest form of an anchor array: float32 little-endian bytes, base64, with sha256."""
    raw = np.ascontiguousarray(anchors, "<f4").reshape(-1, 4).tobytes()
    return {
        "count": len(raw) // 16,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "base64": base64.b64encode(raw).decode("ascii"),
    }


def _anchor_data(data: Mapping[str, Any]) -> np.ndarray:
    count = int(data["count"])
    if not 0 < count <= MAX_ANCHORS:
        raise ValueError(f"anchor_data count {count} is out of range")
    text = str(data["base64"])
    if len(text) > (count * 16 + 2) // 3 * 4 + 4:
        raise ValueError("anchor_data holds more bytes than its count says")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"anchor_data is not base64: {exc}") from exc
    if len(raw) != count * 16:
        raise ValueError(f"anchor_data has {len(raw)} bytes, {count} anchors need {count * 16}")
    if hashlib.sha256(raw).hexdigest() != data["sha256"]:
        raise ValueError("anchor_data does not match its sha256")
    return np.frombuffer(raw, "<f4").reshape(count, 4).astype(np.float32)
