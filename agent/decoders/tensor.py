"""tensor: a model whose outputs are not detections (landmarks, regression, embeddings, heatmaps).

Each frame publishes the named outputs, dequantized: an output of at most `full_max_values`
values goes out in full (while the frame's total stays within `frame_max_values`); a larger one
is summarized by its shape, min, max and argmax (an index into its shape). Both limits are
manifest.extra parameters. A non-finite value fails the frame: it is not a JSON number, and a
model that makes one is broken.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from agent.bundle.manifest import Decoder, Manifest, OutputSpec
from agent.decoders.base import DecoderError, Detection, OutputDecoder, Outputs, check_output
from agent.geometry.letterbox import FrameTransform

logger = logging.getLogger(__name__)

FULL_MAX_VALUES = 256
FRAME_MAX_VALUES = 4096
LIMIT = 1_000_000  # no limit may be set above this: a message stays small
DIGITS = 6  # decimals of published values


class TensorDecoder(OutputDecoder):
    """Publishes every output, small ones in full and large ones summarized; no detections."""

    decoder = Decoder.TENSOR
    roles = ()
    publishes_tensors = True

    def __init__(self, manifest: Manifest, **kw: Any) -> None:
        super().__init__(manifest, **kw)
        self.full_max = _limit(self.extra, "full_max_values", FULL_MAX_VALUES)
        self.frame_max = _limit(self.extra, "frame_max_values", FRAME_MAX_VALUES)
        self.specs: tuple[OutputSpec, ...] = tuple(manifest.outputs)
        seen: set[str] = set()
        names = []
        for spec in self.specs:
            check_output("tensor", spec)
            name = spec.name if spec.name and spec.name not in seen else f"output{spec.index}"
            seen.add(name)
            names.append(name)
        self.names = tuple(names)
        self.full = self._in_full()

    def _in_full(self) -> tuple[bool, ...]:
        """Which outputs go out in full, decided once from their shapes."""
        total, out = 0, []
        for spec in self.specs:
            n = int(np.prod(spec.shape)) if spec.shape else 1
            whole = n <= self.full_max and total + n <= self.frame_max
            total += n if whole else 0
            out.append(whole)
        return tuple(out)

    @property
    def needed_by_index(self) -> tuple[OutputSpec, ...]:
        """Every output, found by its tensor index (several share the role `tensor`)."""
        return self.specs

    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]:
        return []

    def tensors(self, outputs: Any) -> dict[str, Any]:
        """The frame's `tensors` object: name -> {shape, values} or {shape, min, max, argmax}."""
        out: dict[str, Any] = {}
        for spec, name, whole in zip(self.specs, self.names, self.full, strict=True):
            arr = np.asarray(outputs[spec.index], np.float64)
            if not np.isfinite(arr).all():
                raise DecoderError(f"tensor: output {name!r} has NaN or infinite values")
            shape = list(arr.shape)
            if whole:
                out[name] = {"shape": shape, "values": np.round(arr, DIGITS).ravel().tolist()}
            elif arr.size == 0:
                out[name] = {"shape": shape}
            else:
                out[name] = {
                    "shape": shape,
                    "min": round(float(arr.min()), DIGITS),
                    "max": round(float(arr.max()), DIGITS),
                    "argmax": [int(i) for i in np.unravel_index(int(arr.argmax()), arr.shape)],
                }
        return out


def _limit(extra: dict[str, Any], key: str, default: int) -> int:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LIMIT:
        raise DecoderError(f"tensor: {key} must be a whole number from 0 to {LIMIT:,}")
    return value
