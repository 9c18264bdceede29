"""LiteRT (ai-edge-litert): the maintained successor of tflite-runtime, and the fastest here."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agent.runtime.base import Backend, BackendUnavailable

logger = logging.getLogger(__name__)


class LiteRTBackend(Backend):
    name = "litert"
    priority = 10

    def load(self) -> None:
        try:
            from ai_edge_litert import interpreter as mod
        except ImportError as exc:
            raise BackendUnavailable(f"ai-edge-litert is not importable: {exc}") from exc
        self._mod = mod

    @property
    def version(self) -> str:
        try:
            from importlib.metadata import version

            return version("ai-edge-litert")
        except Exception:  # metadata missing in odd installs
            return "unknown"

    def _interpreter(self, model_content: bytes, threads: int, delegates: Sequence[Any]) -> Any:
        return self._mod.Interpreter(
            model_content=model_content,
            num_threads=threads,
            experimental_delegates=list(delegates) or None,
        )

    def load_delegate(self, library: str, options: dict[str, str]) -> Any:
        return self._mod.load_delegate(library, options)
