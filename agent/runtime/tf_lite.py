"""tf.lite.Interpreter from full TensorFlow: deprecated, the last resort on a host."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agent.runtime.base import Backend, BackendUnavailable

logger = logging.getLogger(__name__)


class TFLiteBackend(Backend):
    name = "tf.lite"
    priority = 30

    def load(self) -> None:
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise BackendUnavailable(f"tensorflow is not importable: {exc}") from exc
        self._tf = tf

    @property
    def version(self) -> str:
        return str(self._tf.__version__)

    def _interpreter(self, model_content: bytes, threads: int, delegates: Sequence[Any]) -> Any:
        return self._tf.lite.Interpreter(
            model_content=model_content,
            num_threads=threads,
            experimental_delegates=list(delegates) or None,
        )

    def load_delegate(self, library: str, options: dict[str, str]) -> Any:
        return self._tf.lite.experimental.load_delegate(library, options)
