"""Models timed side by side: each invoked in turn, round after round, so host noise hits all alike.

Used by the latency gate and the pruning latency search. A host with Intel AMX times a model for
a device without it with AMX withheld (converter/amx.py), on the kernels the device has. Withholding
cannot be undone in a process, so that timing runs in a child process (a "worker") that holds the
models and times blocks of invokes on request, and the caller keeps its own kernels.
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
from types import TracebackType
from typing import IO, Any

import numpy as np

from agent.errors import EdgegapError
from agent.runtime import LoadedModel, get_backend, open_model
from converter.amx import AmxState, amx_label, amx_state, withhold_amx

logger = logging.getLogger(__name__)


@dataclass
class Timings:
    samples: list[list[float]]  # ms per invoke, one list per model, in the order given
    backend: str  # "litert 2.3.0"
    amx: str  # amx_label() where the models ran


class TimingError(EdgegapError):
    """A child process that times models failed."""


def bench_input(model: LoadedModel, seed: int = 0) -> np.ndarray:
    """A fixed random input of the model's shape and dtype (integers over their full range)."""
    info = model.inputs[0]
    rng = np.random.default_rng(seed)
    dt = np.dtype(info.dtype)
    if np.issubdtype(dt, np.integer):
        lim = np.iinfo(dt)
        return rng.integers(lim.min, lim.max, size=info.shape, endpoint=True).astype(dt)
    return rng.normal(size=info.shape).astype(dt)


class _Bench:
    """Opened, warmed-up models that time blocks of interleaved invokes."""

    def __init__(
        self, models: Sequence[bytes], threads: int, warmup: int, backend: str | None
    ) -> None:
        self.loaded = [open_model(m, threads, backend) for m in models]
        self.inputs = [bench_input(m) for m in self.loaded]
        for m, x in zip(self.loaded, self.inputs, strict=True):
            m.set_input(x)
            for _ in range(warmup):
                m.invoke()
        first = self.loaded[0]
        self.backend = f"{first.backend} {first.backend_version}"

    def block(self, runs: int) -> list[list[float]]:
        samples: list[list[float]] = [[] for _ in self.loaded]
        for _ in range(runs):
            for i, m in enumerate(self.loaded):
                m.set_input(self.inputs[i])
                t0 = time.perf_counter()
                m.invoke()
                samples[i].append((time.perf_counter() - t0) * 1000.0)
        return samples


class Worker:
    """A child process holding the models (AMX withheld or not) that times blocks on request.
    It starts at once; wait_ready() waits for it to have opened and warmed up the models."""

    def __init__(
        self,
        models: Sequence[bytes],
        threads: int,
        warmup: int,
        backend: str | None,
        withhold: bool,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="edgegap-timing-")
        paths = []
        for i, blob in enumerate(models):
            paths.append(Path(self._tmp.name) / f"{i}.tflite")
            paths[-1].write_bytes(blob)
        spec = {"models": [str(p) for p in paths], "threads": threads, "warmup": warmup,
                "backend": backend, "withhold": withhold}  # fmt: skip
        # stderr goes to a file: an unread pipe could fill up and stall the child.
        self._errors = Path(self._tmp.name) / "stderr.txt"
        with self._errors.open("w") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "converter.timing", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
        self.backend = ""
        self.amx = ""

    def wait_ready(self) -> Worker:
        hello = self._answer()
        self.backend, self.amx = hello["backend"], hello["amx"]
        return self

    def _answer(self) -> Any:
        out: IO[str] = self._proc.stdout  # type: ignore[assignment]
        line = out.readline()
        if not line:
            self._proc.wait(30)
            last = (self._errors.read_text(errors="replace").strip().splitlines() or ["no output"])[
                -1
            ]
            raise TimingError(f"timing process failed: {last}")
        return json.loads(line)

    def block(self, runs: int) -> list[list[float]]:
        stdin: IO[str] = self._proc.stdin  # type: ignore[assignment]
        stdin.write(f"{runs}\n")
        stdin.flush()
        return self._answer()  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._tmp.cleanup()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


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
        bench = _Bench(models, threads, warmup, backend)
        return Timings(bench.block(runs), bench.backend, amx_label())
    with Worker(models, threads, warmup, backend, withhold=True) as worker:
        worker.wait_ready()
        return Timings(worker.block(runs), worker.backend, worker.amx)


def _worker_main(spec: dict[str, Any]) -> None:
    """python -m converter.timing SPEC: open the models, say hello, then time blocks on request."""
    if spec["withhold"]:
        withhold_amx()
    bench = _Bench(
        [Path(p).read_bytes() for p in spec["models"]],
        spec["threads"],
        spec["warmup"],
        spec["backend"],
    )
    print(json.dumps({"backend": bench.backend, "amx": amx_label()}), flush=True)
    for line in sys.stdin:
        print(json.dumps(bench.block(int(line))), flush=True)


if __name__ == "__main__":
    _worker_main(json.loads(sys.argv[1]))
