"""Decoders: one frame's model outputs -> detections, chosen by the manifest's `decoder`."""

from agent.decoders.base import (
    DecoderError,
    Detection,
    OutputDecoder,
    make_decoder,
    needed_roles,
)

__all__ = ["DecoderError", "Detection", "OutputDecoder", "make_decoder", "needed_roles"]
