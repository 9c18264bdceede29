"""Interpreter backends as plugins: LiteRT, then tflite-runtime, then tf.lite, whichever imports."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from agent.runtime.base import Backend, BackendUnavailable, LoadedModel, ModelLoadError, TensorInfo
from agent.runtime.litert import LiteRTBackend
from agent.runtime.native_log import quiet_native_stderr
from agent.runtime.tf_lite import TFLiteBackend
from agent.runtime.tflite_runtime import TFLiteRuntimeBackend

logger = logging.getLogger(__name__)

BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in sorted(Backend.__subclasses__(), key=lambda c: c.priority)
}


@cache
def get_backend(name: str | None = None) -> Backend:
    """The named backend, or the first that imports. A backend that fails to import is skipped."""
    names = [name] if name else list(BACKENDS)
    reasons = []
    for n in names:
        if n not in BACKENDS:
            raise ValueError(f"unknown runtime backend {n!r}; known: {', '.join(BACKENDS)}")
        backend = BACKENDS[n]()
        try:
            backend.load()
        except BackendUnavailable as exc:
            logger.debug("runtime backend %s skipped: %s", n, exc)
            reasons.append(str(exc))
            continue
        logger.info("runtime backend: %s %s", backend.name, backend.version)
        return backend
    raise BackendUnavailable("no TFLite interpreter is available: " + "; ".join(reasons))


def open_model(model: bytes | Path, threads: int = 1, backend: str | None = None) -> LoadedModel:
    """The model in an allocated interpreter; its native start-up lines show only at INFO."""
    content = model.read_bytes() if isinstance(model, Path) else model
    with quiet_native_stderr():
        return get_backend(backend).open(content, threads)


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "LiteRTBackend",
    "LoadedModel",
    "ModelLoadError",
    "TFLiteBackend",
    "TFLiteRuntimeBackend",
    "TensorInfo",
    "get_backend",
    "open_model",
]
