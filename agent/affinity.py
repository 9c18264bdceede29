"""Keeping a multi-threaded interpreter's threads on separate cores (Linux, opt-in).

Between camera frames the inference thread sleeps. When it wakes and invokes the model, the
scheduler may wake the interpreter's worker threads on the inference thread's own core (the
other cores being idle), so every parallel operator runs its shares one after another on that
core until load balancing spreads them again, milliseconds later. With `runtime.pin_threads`
the inference thread is pinned to one core and each worker to another, so the shares run side
by side from the first operator on. The interpreter's workers are found as the native threads
that appear while the model is opened and first invoked.

Pinning does nothing for a one-thread interpreter, and a pinned thread cannot move away from a
core that something else keeps busy: it is for devices that serve the model and little else.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
_TASKS = Path("/proc/self/task")
# The cores this process may use, read at import, before any thread of it is pinned.
ALLOWED: frozenset[int] = (
    frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
)


def native_thread_ids() -> set[int]:
    """Kernel ids of this process's threads; empty where /proc does not list them."""
    try:
        return {int(t) for t in os.listdir(_TASKS)}
    except OSError:
        return set()


def python_thread_ids() -> set[int]:
    return {t.native_id for t in threading.enumerate() if t.native_id is not None}


def new_native_threads(action: Callable[[], T]) -> tuple[T, set[int]]:
    """Run action; return its result and the threads it started that Python did not."""
    before = native_thread_ids()
    result = action()
    return result, native_thread_ids() - before - python_thread_ids()


@contextmanager
def unpinned() -> Iterator[None]:
    """Let the current thread use every allowed core meanwhile, so the threads it starts (and an
    interpreter's workers) do not inherit a pinning it got as an inference thread."""
    if not ALLOWED:
        yield
        return
    before = os.sched_getaffinity(0)
    widened = False
    if before != ALLOWED:
        try:
            os.sched_setaffinity(0, ALLOWED)
            widened = True
        except OSError as exc:  # the cores allowed at start are not all allowed now
            logger.debug("cannot widen the thread's cores: %s", exc)
    try:
        yield
    finally:
        if widened:
            os.sched_setaffinity(0, before)


@dataclass(frozen=True)
class Pinning:
    """Where the inference thread and each interpreter worker run; every other thread may use
    all of ALLOWED."""

    inference_cpu: int
    workers: dict[int, int]  # worker thread id -> cpu

    def pin_inference_thread(self) -> None:
        """Called on the thread that invokes the model. Threads it starts later should be
        started inside unpinned(), so they do not inherit its single core."""
        try:
            os.sched_setaffinity(0, {self.inference_cpu})
        except OSError as exc:
            logger.warning("cannot pin the inference thread (%s); it runs unpinned", exc)


def pin_workers(workers: set[int]) -> Pinning | None:
    """Pin the workers round-robin on all allowed cores but the last, which the Pinning returned
    keeps for the inference thread. None (and a log line saying why) when nothing is pinned: no
    workers, one core, or the OS refused."""
    if not ALLOWED:
        logger.warning("runtime.pin_threads: this platform cannot pin threads; ignored")
        return None
    allowed = sorted(ALLOWED)
    if not workers:
        logger.info("runtime.pin_threads: the interpreter started no worker threads; nothing pinned")
        return None
    if len(allowed) < 2:
        logger.info("runtime.pin_threads: one core allowed; nothing pinned")
        return None
    inference, others = allowed[-1], allowed[:-1]
    placed = {tid: others[i % len(others)] for i, tid in enumerate(sorted(workers))}
    try:
        for tid, cpu in placed.items():
            os.sched_setaffinity(tid, {cpu})
    except OSError as exc:
        logger.warning("cannot pin the interpreter's threads (%s); they run unpinned", exc)
        return None
    logger.info(
        "runtime.pin_threads: inference thread on cpu %d, %d interpreter worker(s) on cpu %s",
        inference,
        len(placed),
        ",".join(str(c) for c in sorted(set(placed.values()))),
    )
    return Pinning(inference, placed)
