"""Models timed side by side: each invoked in turn, round after round, so host noise hits all alike.

Asked to withhold AMX (agent/runtime/amx.py) on a CPU whose AMX this process may still use, the
timing runs in a child process that withholds it before opening the models: withholding cannot be
undone, and the caller (the converter, a notebook) keeps its own kernels.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import EdgegapError
from agent.runtime import LoadedModel, get_backend, open_model
from agent.runtime.amx import AmxState, amx_label, amx_state, withhold_amx

logger = logging.getLogger(__name__)


@dataclass
class Timings:
    samples: list[list[float]]  # ms per invoke, one list per model, in the order given
    backend: str  # "litert 2.3.0"
    amx: str  # amx_label() where the models ran


class TimingError(EdgegapError):
    """The child process that times models with AMX withheld failed."""


def bench_input(model: LoadedModel, seed: int = 0) -> np.ndarray:
    """A fixed random input of the model's shape and dtype (integers over their full range)."""
    info = model.inputs[0]
    rng = np.random.default_rng(seed)
    dt = np.dtype(info.dtype)
    if np.issubdtype(dt, np.integer):
        lim = np.iinfo(dt)
        return rng.integers(lim.min, lim.max, size=info.shape, endpoint=True).astype(dt)
    return rng.normal(size=info.shape).astype(dt)


def _time_here(
    models: Sequence[bytes], threads: int, runs: int, warmup: int, backend: str | None
) -> Timings:
    loaded = [open_model(m, threads, backend) for m in models]
    inputs = [bench_input(m) for m in loaded]
    for m, x in zip(loaded, inputs, strict=True):
        m.set_input(x)
        for _ in range(warmup):
            m.invoke()
    samples: list[list[float]] = [[] for _ in loaded]
    for _ in range(runs):
        for i, m in enumerate(loaded):
            m.set_input(inputs[i])
            t0 = time.perf_counter()
            m.invoke()
            samples[i].append((time.perf_counter() - t0) * 1000.0)
    first = loaded[0]
    return Timings(samples, f"{first.backend} {first.backend_version}", amx_label())


def time_interleaved(
    models: Sequence[bytes],
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    backend: str | None = None,
    withhold: bool = False,
) -> Timings:
    """Invoke times of each model, interleaved run by run; with `withhold`, on kernels without AMX."""
    if not models:
        raise ValueError("no models to time")
    if backend is not None:
        get_backend(backend)  # an unknown or missing backend fails here, in this process
    if not withhold or amx_state() in (AmxState.ABSENT, AmxState.WITHHELD):
        return _time_here(models, threads, runs, warmup, backend)
    with tempfile.TemporaryDirectory(prefix="edgegap-timing-") as tmp:
        paths = []
        for i, blob in enumerate(models):
            paths.append(Path(tmp) / f"{i}.tflite")
            paths[-1].write_bytes(blob)
        spec = {"models": [str(p) for p in paths], "threads": threads, "runs": runs,
                "warmup": warmup, "backend": backend}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "agent.runtime.timing"],
            input=json.dumps(spec), capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TimingError(f"timing with AMX withheld failed in its child process: {last}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return Timings(answer["samples"], answer["backend"], answer["amx"])


def _child() -> None:
    """python -m agent.runtime.timing: read a spec on stdin, withhold AMX, time, answer in JSON."""
    spec = json.loads(sys.stdin.read())
    withhold_amx()
    blobs = [Path(p).read_bytes() for p in spec["models"]]
    t = _time_here(blobs, spec["threads"], spec["runs"], spec["warmup"], spec["backend"])
    print(json.dumps({"samples": t.samples, "backend": t.backend, "amx": t.amx}))


if __name__ == "__main__":
    _child()
