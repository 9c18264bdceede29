"""The interpreter backend plugin interface, and a thin model wrapper shared by every backend."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BackendUnavailable(EdgegapError, RuntimeError):
    """The backend's package is not installed or failed to import."""


class ModelLoadError(EdgegapError, ValueError):
    """The runtime refused the model: corrupt flatbuffer, unknown op, or allocation failure."""


class Backend(ABC):
    """One TFLite-compatible interpreter package. Subclasses live one per file."""

    name: str = ""
    priority: int = 100  # lower is preferred

    @abstractmethod
    def load(self) -> None:
        """Import the package; raise BackendUnavailable when it cannot be used here."""

    @property
    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def _interpreter(self, model_content: bytes, threads: int, delegates: Sequence[Any]) -> Any: ...

    @abstractmethod
    def load_delegate(self, library: str, options: dict[str, str]) -> Any:
        """The package's load_delegate: raises OSError for a missing library, ValueError when
        the delegate refuses to start."""

    def open(
        self, model_content: bytes, threads: int = 1, delegates: Sequence[Any] = ()
    ) -> LoadedModel:
        try:
            interp = self._interpreter(model_content, threads, delegates)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{self.name} could not load the model: {exc}") from exc
        return LoadedModel(interp, self.name, self.version)


@dataclass
class TensorInfo:
    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int


def _info(d: dict[str, Any]) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorInfo(
        name=str(d["name"]),
        index=int(d["index"]),
        shape=tuple(int(x) for x in d["shape"]),
        dtype=np.dtype(d["dtype"]),
        scale=float(scale),
        zero_point=int(zp),
    )


class LoadedModel:
    """An allocated interpreter with typed tensor details. Not thread-safe: one caller at a time."""

    def __init__(self, interpreter: Any, backend: str, backend_version: str) -> None:
        self._interp = interpreter
        self.backend = backend
        self.backend_version = backend_version
        self.delegate: str | None = None  # the delegate in use (agent.runtime.delegates.describe)
        self.delegate_fallback: str | None = None  # why a delegate asked for is not in use
        self.inputs = [_info(d) for d in interpreter.get_input_details()]
        self.outputs = [_info(d) for d in interpreter.get_output_details()]

    def set_input(self, value: np.ndarray, position: int = 0) -> None:
        self._interp.set_tensor(self.inputs[position].index, value)

    def write_input(self, fill: Callable[[np.ndarray], T], position: int = 0) -> T:
        """Let `fill` write the input tensor in place, saving set_input's copy.

        `fill` gets the interpreter's own buffer and must not keep it: invoke() refuses to run
        while any view of the buffer is alive.
        """
        return fill(self._interp.tensor(self.inputs[position].index)())

    def invoke(self) -> None:
        self._interp.invoke()

    def get(self, tensor_index: int) -> np.ndarray:
        """Copy of a tensor by interpreter index (indices are recorded in the manifest).

        Every backend's get_tensor() already returns a copy, so none is made here.
        """
        return self._interp.get_tensor(tensor_index)

    def run(self, value: np.ndarray) -> list[np.ndarray]:
        """Set the single input, invoke, and return every output in get_output_details() order."""
        self.set_input(value)
        self.invoke()
        return [self.get(o.index) for o in self.outputs]

    def op_names(self) -> list[str]:
        """Operator names in the graph (builtin names, or the custom op's name)."""
        details = self._interp._get_ops_details()
        return [str(d["op_name"]) for d in details]
