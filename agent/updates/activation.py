"""Bringing a bundle into service: load it off the frame path, then swap it in between frames.

`load_served_model` (verify, open, warm up, check tensors against the manifest, golden
check) runs on the calling thread (the updater's), while the pipeline keeps serving the old model.
The swap itself is one reference handed to the pipeline, taken at its next frame.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import AgentConfig
from agent.pipeline import Pipeline
from agent.served import ServedModel, load_served_model

logger = logging.getLogger(__name__)

SWAP_WAIT_S = 5.0


def load(path: Path, config: AgentConfig, keys: list[Ed25519PublicKey]) -> ServedModel:
    """The bundle at path as a ServedModel, with the current score threshold."""
    started = time.perf_counter()
    served = load_served_model(path, config, keys, weight_cache=config.updates.weight_cache)
    logger.info(
        "loaded %s v%d off the frame path in %.0f ms (%s)",
        served.manifest.name,
        served.manifest.version,
        (time.perf_counter() - started) * 1000,
        type(served.model).__name__,
    )
    return served


def swap(pipeline: Pipeline, served: ServedModel, timeout: float = SWAP_WAIT_S) -> bool:
    """Hand served to the pipeline; True once a frame took it (False: no frame came in time)."""
    pipeline.swap(served)
    deadline = time.monotonic() + timeout
    while pipeline.served is not served:
        if time.monotonic() > deadline:
            logger.warning(
                "no frame took the new model within %.0f s; it serves from the next", timeout
            )
            return False
        time.sleep(0.002)
    return True
