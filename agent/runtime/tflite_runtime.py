"""tflite-runtime: frozen at 2.14, still the only wheel for some 32-bit ARM boards."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agent.runtime.base import Backend, BackendUnavailable

logger = logging.getLogger(__name__)


class TFLiteRuntimeBackend(Backend):
    name = "tflite-runtime"
    priority = 20

    def load(self) -> None:
        try:
            from tflite_runtime import interpreter as mod
        except ImportError as exc:
            raise BackendUnavailable(f"tflite-runtime is not importable: {exc}") from exc
        self._mod = mod

    @property
    def version(self) -> str:
        import tflite_runtime

        return str(getattr(tflite_runtime, "__version__", "unknown"))

    def _interpreter(self, model_content: bytes, threads: int, delegates: Sequence[Any]) -> Any:
        return self._mod.Interpreter(
            model_content=model_content,
            num_threads=threads,
            experimental_delegates=list(delegates) or None,
        )

    def load_delegate(self, library: str, options: dict[str, str]) -> Any:
        return self._mod.load_delegate(library, options)
