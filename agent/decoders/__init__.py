"""Decoders as plugins: one frame's model outputs -> detections, chosen by the manifest's `decoder`.

Each decoder is a pure function of dequantized output tensors (looked up by the roles the
manifest records) and the frame transform; one module each:
  ssd_postprocess  TFLite_Detection_PostProcess: boxes, classes, scores, count
  ssd_raw          box encodings against anchors (manifest.extra), decoded here, then NMS
  yolo             [1, N, 4 + C] (cx, cy, w, h, class scores), then NMS
  classification   probabilities or logits -> top-k labels
  tensor           no detections: the outputs themselves, dequantized (small ones in full)
A manifest's decoder is never guessed: one the agent does not serve is refused.
"""

from __future__ import annotations

import logging

from agent.bundle.manifest import Manifest, OutputRole, OutputSpec
from agent.decoders.base import BBox, DecoderError, Detection, OutputDecoder
from agent.decoders.classification import ClassificationDecoder
from agent.decoders.ssd_postprocess import SSDPostprocessDecoder
from agent.decoders.ssd_raw import SSDRawDecoder
from agent.decoders.tensor import TensorDecoder
from agent.decoders.yolo import YoloDecoder

logger = logging.getLogger(__name__)

DECODERS = {cls.decoder: cls for cls in OutputDecoder.__subclasses__()}


def needed_roles(decoder: OutputDecoder) -> tuple[OutputRole, ...]:
    """The output roles a decoder reads; only those tensors are copied out of the interpreter."""
    return getattr(decoder, "needed", decoder.roles)


def needed_outputs(
    decoder: OutputDecoder, manifest: Manifest
) -> list[tuple[OutputRole | int, OutputSpec]]:
    """The outputs copied out of the interpreter per frame, each under the key the decoder reads
    it by: its role, or, for a decoder that reads outputs sharing one role, its tensor index."""
    by_index = getattr(decoder, "needed_by_index", None)
    if by_index is not None:
        return [(spec.index, spec) for spec in by_index]
    return [(role, manifest.output(role)) for role in needed_roles(decoder)]


def make_decoder(
    manifest: Manifest, score_threshold: float = 0.5, max_detections: int = 100, top_k: int = 5
) -> OutputDecoder:
    """The decoder the manifest names. A manifest that names none the agent serves is refused."""
    cls = DECODERS.get(manifest.decoder)
    if cls is None:
        served = ", ".join(d.value for d in DECODERS)
        raise DecoderError(
            f"bundle decoder {manifest.decoder.value!r} is not served by the agent (serves {served})"
        )
    return cls(
        manifest, score_threshold=score_threshold, max_detections=max_detections, top_k=top_k
    )


__all__ = [
    "DECODERS",
    "BBox",
    "ClassificationDecoder",
    "DecoderError",
    "Detection",
    "OutputDecoder",
    "SSDPostprocessDecoder",
    "SSDRawDecoder",
    "TensorDecoder",
    "YoloDecoder",
    "make_decoder",
    "needed_outputs",
    "needed_roles",
]
