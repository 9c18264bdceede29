"""Interpreter backends as plugins: LiteRT, then tflite-runtime, then tf.lite, whichever imports."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from agent.runtime.base import Backend, BackendUnavailable, LoadedModel, ModelLoadError, TensorInfo
from agent.runtime.delegates import (
    DelegateError,
    DelegateSpec,
    check_library,
    custom_op_error,
    delegate_spec,
    describe,
    load_failure,
    unresolved_custom_op,
)
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


def open_model(
    model: bytes | Path,
    threads: int = 1,
    backend: str | None = None,
    delegate: DelegateSpec | None = None,
    fallback_cpu: bool = False,
) -> LoadedModel:
    """The model in an allocated interpreter, with the delegate when one is given; its native
    start-up lines show only at INFO.

    With `fallback_cpu`, a delegate that will not load (or will not take the model) leaves the
    model on the CPU, if it can run there; LoadedModel.delegate_fallback says why.
    """
    content = model.read_bytes() if isinstance(model, Path) else model
    be = get_backend(backend)
    with quiet_native_stderr():
        if delegate is None:
            return _open_on(be, content, threads, None, None)
        try:
            return _open_on(be, content, threads, delegate, None)
        except DelegateError as exc:
            if not fallback_cpu or unresolved_custom_op(str(exc.__cause__ or "")) is not None:
                raise
            on_cpu = _open_on(be, content, threads, None, str(exc))
            logger.warning("%s; serving on the CPU (runtime.delegate_fallback: cpu)", exc)
            return on_cpu


def _open_on(
    be: Backend, content: bytes, threads: int, spec: DelegateSpec | None, fell_back: str | None
) -> LoadedModel:
    """Open with the delegate `spec` (None: the CPU). Every failure involving a delegate, or a
    custom op no one resolves, is a DelegateError."""
    handles = []
    if spec is not None:
        check_library(spec)
        try:
            handles.append(be.load_delegate(spec.library, spec.options))
        except (OSError, ValueError, RuntimeError, AttributeError) as exc:
            raise load_failure(spec, exc) from exc
    try:
        model = be.open(content, threads, handles)
    except ModelLoadError as exc:
        op = unresolved_custom_op(str(exc))
        if op is not None:
            raise custom_op_error(op, spec, fell_back) from exc
        if spec is not None:
            raise DelegateError(f"delegate {spec.name} did not take the model: {exc}") from exc
        raise
    model.delegate = describe(spec)
    model.delegate_fallback = fell_back
    if spec is not None:
        logger.info("delegate %s loaded (%s)", spec.name, spec.library)
    return model


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "DelegateError",
    "DelegateSpec",
    "LiteRTBackend",
    "LoadedModel",
    "ModelLoadError",
    "TFLiteBackend",
    "TFLiteRuntimeBackend",
    "TensorInfo",
    "delegate_spec",
    "get_backend",
    "open_model",
]
