"""LiteRT's CompiledModel with an XNNPACK weight cache built in a child process.

`Interpreter.allocate_tensors` packs a model's weights for XNNPACK while holding Python's GIL,
so loading a new model beside a serving one stalls the frame thread for as long as the packing
takes (tens of ms for a 30 MB model on x86, ten times that on an Arm board). Here a child process
packs them into a weight cache file; the serving process then opens the model with
`CompiledModel` over that file, which maps the packed weights instead of packing them.

The cache file is named by the model's sha256 and lives in the bundle's folder, so it goes with
the bundle. The child opens it first every time: a cache that is missing, cut short or corrupt is
rebuilt there (XNNPACK checks its header and layout), never in the serving process.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime.base import LoadedModel, ModelLoadError, T
from agent.runtime.native_log import quiet_native_stderr

logger = logging.getLogger(__name__)

BACKEND = "litert"
CHILD_TIMEOUT_S = 300.0

# The child imports only LiteRT's native wrappers (not numpy's dtype extensions, which take a
# second to import on a small board), at a lower priority than the frames being served, then
# reads its job from stdin: one JSON line [model path, cache path, threads]. So it can be started
# ahead, while the download runs, and wait (an agent that goes away closes its stdin: it exits).
# It exits 0 once the model opened with the cache, which is then complete and valid.
_CHILD = """
import json, os, sys
os.nice(10)
import ai_edge_litert
from ai_edge_litert import _pywrap_litert_compiled_model_wrapper as cm
from ai_edge_litert.environment import Environment, EnvironmentOptions
from ai_edge_litert.options import CpuOptions, Options
env = Environment.create(options=EnvironmentOptions(
    runtime_path=os.path.dirname(os.path.abspath(ai_edge_litert.__file__))))
line = sys.stdin.readline()
if not line:
    sys.exit(0)
model, cache, threads = json.loads(line)
opts = Options(cpu_options=CpuOptions(num_threads=threads, xnnpack_weight_cache_path=cache))
cm.CreateCompiledModelFromFile(env.capsule, model, **opts._as_flat_kwargs())
"""

_ahead: subprocess.Popen[bytes] | None = None  # a child started ahead, waiting for its job
_ahead_lock = threading.Lock()


class WeightCacheError(ModelLoadError):
    """The child process could not build the weight cache."""


def cache_path(folder: Path, sha256: str) -> Path:
    """Where the weight cache of the model with this sha256 lives in its bundle's folder."""
    return folder / f"weights-{sha256}.xnnpack"


def start_ahead() -> None:
    """Start a child now, unless one is waiting, so that the next build does not wait for Python
    and LiteRT to start in it (about 0.1 s on the development VM; several times that on a board).
    The updater calls this when a download begins."""
    global _ahead
    with _ahead_lock:
        if _ahead is None or _ahead.poll() is not None:
            try:
                _ahead = _spawn()
            except OSError as exc:
                logger.debug("weight cache child not started ahead: %s", exc)


def _spawn() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def build_weight_cache(model_file: Path, cache_file: Path, threads: int) -> None:
    """Pack the weights of the model at model_file into cache_file in a child process (rebuilt
    there if it is absent or bad); the child started ahead, if one is waiting."""
    global _ahead
    job = json.dumps([str(model_file), str(cache_file), threads]).encode() + b"\n"
    try:
        with _ahead_lock:
            child = _ahead if _ahead is not None and _ahead.poll() is None else _spawn()
            _ahead = None
        try:
            _, err = child.communicate(job, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WeightCacheError(f"the weight cache child did not run: {exc}") from exc
    native = err.decode(errors="replace").strip()
    if child.returncode != 0:
        tail = native.splitlines()[-1] if native else "no output"
        raise WeightCacheError(f"the weight cache child exited {child.returncode}: {tail[:300]}")
    if native:
        logger.debug("weight cache child: %s", native[-2000:])
    if not cache_file.is_file():
        raise WeightCacheError(f"the weight cache child wrote no {cache_file.name}")


class CompiledLoadedModel(LoadedModel):
    """A LoadedModel over LiteRT's CompiledModel (signature 0). Tensor details, indices and op
    names come from an interpreter that is never allocated, so they are the Interpreter's own."""

    def __init__(self, compiled: Any, details: Any, version: str) -> None:
        super().__init__(details, BACKEND, version)
        self._compiled = compiled
        signatures = compiled.GetSignatureList()
        if len(signatures) != 1:
            raise ModelLoadError(f"CompiledModel: {len(signatures)} signatures, not 1")
        key, sig = next(iter(signatures.items()))
        ins = compiled.GetInputTensorDetails(key)
        outs = compiled.GetOutputTensorDetails(key)
        in_index = [int(ins[name]["index"]) for name in sig["inputs"]]
        out_index = [int(outs[name]["index"]) for name in sig["outputs"]]
        if sorted(in_index) != sorted(i.index for i in self.inputs) or sorted(out_index) != sorted(
            o.index for o in self.outputs
        ):
            raise ModelLoadError("CompiledModel's tensors are not the interpreter's")
        # shapes an op sets at allocation (TFLite_Detection_PostProcess's) are the compiled ones
        shapes = {
            int(d["index"]): tuple(int(n) for n in d["shape"])
            for d in [*ins.values(), *outs.values()]
        }
        self.inputs = [replace(i, shape=shapes[i.index]) for i in self.inputs]
        self.outputs = [replace(o, shape=shapes[o.index]) for o in self.outputs]
        self._buffers = _native().buffers
        self._in_buffers = list(compiled.CreateInputBuffers(0))
        self._out_buffers = list(compiled.CreateOutputBuffers(0))
        self._in_at = [in_index.index(i.index) for i in self.inputs]
        self._out_at = {o.index: (out_index.index(o.index), o) for o in self.outputs}
        self._staged = [np.zeros(i.shape, dtype=i.dtype) for i in self.inputs]
        # The first write starts another LiteRT environment, which lists every accelerator it
        # tries on stderr: done here, inside open_cached's quiet block, with zeros.
        for position, zeros in enumerate(self._staged):
            self._write(position, zeros)

    def set_input(self, value: np.ndarray, position: int = 0) -> None:
        spec = self.inputs[position]
        if value.shape != spec.shape or value.dtype != spec.dtype:
            raise ValueError(
                f"input {spec.name}: got {value.dtype}{list(value.shape)}, "
                f"the model takes {spec.dtype}{list(spec.shape)}"
            )
        self._write(position, value)

    def _write(self, position: int, value: np.ndarray) -> None:
        flat = np.ascontiguousarray(value).reshape(-1)
        self._buffers.WriteTensorBuffer(
            self._in_buffers[self._in_at[position]], flat, flat.dtype.name
        )

    def write_input(self, fill: Callable[[np.ndarray], T], position: int = 0) -> T:
        """`fill` writes a staging array, which is then copied into the model's input buffer."""
        staged = self._staged[position]
        result = fill(staged)
        self._write(position, staged)
        return result

    def invoke(self) -> None:
        self._compiled.RunByIndex(0, self._in_buffers, self._out_buffers)

    def get(self, tensor_index: int) -> np.ndarray:
        if tensor_index not in self._out_at:
            raise ValueError(f"tensor {tensor_index} is not an output of this model")
        at, spec = self._out_at[tensor_index]
        out = np.empty(spec.shape, dtype=spec.dtype)
        self._buffers.ReadTensorToBuffer(self._out_buffers[at], out.reshape(-1), out.dtype.name)
        return out


@dataclass(frozen=True)
class _Native:
    """LiteRT's native CompiledModel and TensorBuffer wrappers and its option classes. Its public
    `compiled_model` module would also import numpy's extra dtypes (ml_dtypes), which takes about
    two seconds of CPU at every agent start; these take under 0.1 s."""

    models: Any
    buffers: Any
    environment: Any  # ai_edge_litert.environment.Environment
    options: Any
    cpu_options: Any


@cache
def _native() -> _Native:
    from ai_edge_litert import _pywrap_litert_compiled_model_wrapper as models
    from ai_edge_litert import _pywrap_litert_tensor_buffer_wrapper as buffers
    from ai_edge_litert.environment import Environment
    from ai_edge_litert.options import CpuOptions, Options

    return _Native(models, buffers, Environment, Options, CpuOptions)


@cache
def unavailable() -> str | None:
    """Why CompiledModel cannot be used here, or None. Imports it and starts LiteRT's environment
    (its accelerator libraries): call before frames flow."""
    try:
        native = _native()
    except ImportError as exc:
        return f"LiteRT's CompiledModel is not importable: {exc}"
    fields = getattr(native.cpu_options, "__dataclass_fields__", {})
    if "xnnpack_weight_cache_path" not in fields:
        return "this LiteRT's CompiledModel has no XNNPACK weight cache option"
    try:
        _environment()
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        return f"LiteRT's environment did not start: {exc}"
    return None


@cache
def _environment() -> Any:
    """One LiteRT environment for every model opened here (kept for the process's life)."""
    import ai_edge_litert
    from ai_edge_litert.environment import EnvironmentOptions

    runtime = str(Path(ai_edge_litert.__file__).resolve().parent)
    with quiet_native_stderr(below=logging.DEBUG):
        return _native().environment.create(options=EnvironmentOptions(runtime_path=runtime))


def open_cached(
    content: bytes, model_file: Path, threads: int, cache_file: Path, version: str
) -> LoadedModel:
    """content (the bytes of model_file) opened with CompiledModel over the weight cache
    cache_file, which a child builds first from model_file.

    Raises ImportError when this LiteRT has no CompiledModel, WeightCacheError when the child
    fails, ModelLoadError when LiteRT refuses the model.
    """
    from ai_edge_litert import interpreter

    native = _native()
    build_weight_cache(model_file, cache_file, threads)
    cpu = native.cpu_options(num_threads=threads, xnnpack_weight_cache_path=str(cache_file))
    flat = native.options(cpu_options=cpu)._as_flat_kwargs()
    try:
        with quiet_native_stderr(below=logging.DEBUG):
            compiled = native.models.CreateCompiledModelFromBuffer(
                _environment().capsule, content, **flat
            )
            details = interpreter.Interpreter(model_content=content, num_threads=threads)
            return CompiledLoadedModel(compiled, details, version)
    except (ValueError, RuntimeError, TypeError, AttributeError, KeyError) as exc:
        raise ModelLoadError(f"CompiledModel could not load the model: {exc}") from exc
