"""SSD anchors (ycenter, xcenter, h, w) in [0, 1] from a grid spec.

One grid per feature map; per cell, one anchor per aspect ratio r at the level's first scale
s0 (h = s0 / sqrt(r), w = s0 * sqrt(r)), then one square anchor per further scale of the level.
Order: level, row, column, anchor (the order an SSD head's reshape gives). The converter's
reference detector describes its grid with AnchorConfig; a manifest records the same grid as a
mapping (`AnchorConfig.to_dict()`, or a hand-written one with [H, W] maps and scalar scales).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MAX_ANCHORS = 1_000_000  # bounded before a generator allocates


def grid_anchors(spec: Mapping[str, Any]) -> np.ndarray:
    """(A, 4) float32 anchors from {"feature_maps": [G or [H, W] per level], "scales": [s or
    [s0, s1, ...] per level], "aspect_ratios": [r, ...]}."""
    maps, scales, ratios = spec["feature_maps"], spec["scales"], spec["aspect_ratios"]
    if len(maps) != len(scales):
        raise ValueError("anchor grid: feature_maps and scales must have the same length")
    rows: list[tuple[float, float, float, float]] = []
    for fmap, level in zip(maps, scales, strict=True):
        fh, fw = (fmap, fmap) if isinstance(fmap, int | float) else fmap
        level = [level] if isinstance(level, int | float) else list(level)
        shapes = [(level[0] / math.sqrt(r), level[0] * math.sqrt(r)) for r in ratios]
        shapes += [(s, s) for s in level[1:]]
        for y in range(int(fh)):
            for x in range(int(fw)):
                rows.extend(((y + 0.5) / fh, (x + 0.5) / fw, h, w) for h, w in shapes)
    return np.asarray(rows, np.float32)


@dataclass(frozen=True)
class AnchorConfig:
    """Square grids, one per feature map, with equally many scales per level."""

    feature_maps: tuple[int, ...] = (24, 12, 6)  # strides 8, 16 and 32 of a 192 px input
    scales: tuple[tuple[float, ...], ...] = ((0.1, 0.14), (0.2, 0.28), (0.38, 0.52))
    aspect_ratios: tuple[float, ...] = (1.0, 1.6, 0.6)

    @classmethod
    def for_input(cls, size: int) -> AnchorConfig:
        """The default grid for a square input whose side is a multiple of 32."""
        if size % 32:
            raise ValueError(f"input size {size} is not a multiple of 32")
        return cls(feature_maps=(size // 8, size // 16, size // 32))

    @property
    def per_cell(self) -> int:
        return len(self.aspect_ratios) + len(self.scales[0]) - 1

    @property
    def count(self) -> int:
        return sum(g * g for g in self.feature_maps) * self.per_cell

    def to_dict(self) -> dict[str, Any]:
        return {k: [list(v) if isinstance(v, tuple) else v for v in vals] if k == "scales" else list(vals)
                for k, vals in asdict(self).items()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnchorConfig:
        return cls(
            feature_maps=tuple(int(v) for v in d["feature_maps"]),
            scales=tuple(tuple(float(s) for s in lvl) for lvl in d["scales"]),
            aspect_ratios=tuple(float(v) for v in d["aspect_ratios"]),
        )


def generate_anchors(cfg: AnchorConfig) -> np.ndarray:
    """(A, 4) float32 anchors, (ycenter, xcenter, h, w), of an AnchorConfig."""
    if len(cfg.scales) != len(cfg.feature_maps) or len({len(s) for s in cfg.scales}) != 1:
        raise ValueError("need one equally long list of scales per feature map")
    return grid_anchors(cfg.to_dict())


def ssd_anchors(spec: Mapping[str, Any]) -> np.ndarray:
    """(A, 4) float32 anchors (ycenter, xcenter, h, w) from SSD anchor-generator parameters, the
    ones MediaPipe-style and TF Object Detection API models are described with:

      input_size [H, W] (or one int), strides [s, ...] (one per layer), aspect_ratios [r, ...],
      scales [s, ...] (one per layer) or min_scale and max_scale (spread evenly over the layers),
      interpolated_scale_aspect_ratio (default 1.0; 0 leaves out the anchor between two layers'
      scales), offsets [x, y] (default [0.5, 0.5]), fixed_anchor_size (default false: w = h = 1),
      reduce_boxes_in_lowest_layer (default false).

    Consecutive layers with the same stride share one grid: their anchors are interleaved per
    cell. Order: grid, row, column, anchor.
    """
    check_generator_keys(spec)
    strides = [int(s) for s in spec["strides"]]
    if not strides or any(s <= 0 for s in strides):
        raise ValueError("strides must be one positive number per layer")
    size = spec["input_size"]
    in_h, in_w = (int(size), int(size)) if isinstance(size, int | float) else map(int, size)
    scales = _layer_scales(spec, len(strides))
    ratios = [float(r) for r in spec.get("aspect_ratios", [1.0])]
    interp = float(spec.get("interpolated_scale_aspect_ratio", 1.0))
    off_x, off_y = (float(v) for v in spec.get("offsets", (0.5, 0.5)))
    fixed = bool(spec.get("fixed_anchor_size", False))
    reduce_lowest = bool(spec.get("reduce_boxes_in_lowest_layer", False))
    rows: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < len(strides):
        shapes: list[tuple[float, float]] = []  # (h, w) per anchor of a cell
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            shapes += _cell_shapes(scales, last, ratios, interp, reduce_lowest and last == 0)
            last += 1
        fh, fw = math.ceil(in_h / strides[layer]), math.ceil(in_w / strides[layer])
        if len(rows) + fh * fw * len(shapes) > MAX_ANCHORS:
            raise ValueError(f"anchor generator makes more than {MAX_ANCHORS:,} anchors")
        for y in range(fh):
            for x in range(fw):
                cy, cx = (y + off_y) / fh, (x + off_x) / fw
                rows.extend((cy, cx, 1.0, 1.0) if fixed else (cy, cx, h, w) for h, w in shapes)
        layer = last
    return np.asarray(rows, np.float32)


GENERATOR_KEYS = frozenset({
    "input_size", "strides", "aspect_ratios", "scales", "min_scale", "max_scale",
    "interpolated_scale_aspect_ratio", "offsets", "fixed_anchor_size",
    "reduce_boxes_in_lowest_layer",
})  # fmt: skip


def check_generator_keys(spec: Mapping[str, Any]) -> None:
    """A misspelt key would leave its default in place: refused, as is a missing one."""
    unknown = sorted(str(k) for k in spec if k not in GENERATOR_KEYS)
    if unknown:
        raise ValueError(
            f"unknown anchor-generator key {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(GENERATOR_KEYS))})"
        )
    for key in ("input_size", "strides"):
        if key not in spec:
            raise ValueError(f"the anchor generator needs {key}")


def _layer_scales(spec: Mapping[str, Any], layers: int) -> list[float]:
    """One scale per layer, and the one after the last (1.0) for the interpolated anchor."""
    if "scales" in spec:
        scales = [float(s) for s in spec["scales"]]
        if len(scales) != layers:
            raise ValueError(f"scales has {len(scales)} values for {layers} strides")
    else:
        lo, hi = float(spec["min_scale"]), float(spec["max_scale"])
        scales = [
            (lo + hi) / 2 if layers == 1 else lo + (hi - lo) * i / (layers - 1)
            for i in range(layers)
        ]
    return [*scales, 1.0]


def _cell_shapes(
    scales: list[float], layer: int, ratios: list[float], interp: float, reduced: bool
) -> list[tuple[float, float]]:
    """(h, w) of each anchor a layer puts in a cell."""
    s = scales[layer]
    pairs = [(0.1, 1.0), (s, 2.0), (s, 0.5)] if reduced else [(s, r) for r in ratios]
    if interp > 0 and not reduced:
        pairs.append((math.sqrt(s * scales[layer + 1]), interp))
    return [(sc / math.sqrt(r), sc * math.sqrt(r)) for sc, r in pairs]
