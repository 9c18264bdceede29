"""classification: probabilities or logits -> the top-k labels, no boxes."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from agent.bundle.manifest import Decoder, Manifest, OutputRole
from agent.decoders.base import ACTIVATIONS, DecoderError, Detection, OutputDecoder, Outputs
from agent.geometry.letterbox import FrameTransform

logger = logging.getLogger(__name__)


class ClassificationDecoder(OutputDecoder):
    """Top-k classes of a probabilities (or logits, softmaxed here) output; no boxes."""

    decoder = Decoder.CLASSIFICATION
    roles = ()

    def __init__(self, manifest: Manifest, **kw: Any) -> None:
        super().__init__(manifest, **kw)
        roles = {o.role for o in manifest.outputs}
        if OutputRole.PROBABILITIES in roles:
            self.role, self.activation = OutputRole.PROBABILITIES, ACTIVATIONS["none"]
        elif OutputRole.LOGITS in roles:
            act = str(self.extra.get("activation", "softmax"))
            if act not in ACTIVATIONS:
                raise DecoderError(
                    f"classification: activation must be one of {', '.join(ACTIVATIONS)}"
                )
            self.role, self.activation = OutputRole.LOGITS, ACTIVATIONS[act]
        else:
            raise DecoderError("classification needs an output with role probabilities or logits")
        spec = manifest.output(self.role)
        self.warn_label_count(spec, math.prod(spec.shape))

    @property
    def needed(self) -> tuple[OutputRole, ...]:
        return (self.role,)

    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]:
        p = self.activation(outputs[self.role].reshape(-1).astype(np.float32))
        k = min(self.top_k, len(p))
        top = np.argsort(-p, kind="stable")[:k]
        top = top[np.isfinite(p[top])]  # NaN sorts last, but top-k can still reach it
        return [Detection(int(i), self.label(int(i)), float(p[i])) for i in top]
