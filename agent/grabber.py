"""The grabber thread: reads a source as frames arrive and keeps only the newest one.

Inference never works on a stale frame: a frame that is replaced before the pipeline takes it
is dropped and counted. Lost cameras and streams are reopened with doubling backoff. Given a
prepare function, the grabber also makes each frame's model input right after decoding it, so
the inference thread only invokes (cheap next to the decode, even for frames later dropped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.config import Rate, ReconnectConfig, SourceKind
from agent.sources import FrameSource, SourceError, SourceLost

logger = logging.getLogger(__name__)

DEFAULT_FOLDER_FPS = 10.0


@dataclass(frozen=True, eq=False)
class Frame:
    image: np.ndarray  # HxWx3 BGR uint8, owned by this frame
    index: int  # position in the source since start: counts dropped frames too
    timestamp: float  # wall-clock capture time (Unix seconds)
    captured: float  # perf_counter() at capture, for latency
    grab_s: float  # time spent reading and decoding this frame
    prepared: Any = None  # the model input made on the grabber thread, when prepare is given
    pre_s: float = 0.0  # time spent preparing it

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass
class GrabberStats:
    read: int = 0
    dropped: int = 0
    reconnects: int = 0
    lost_since: float | None = field(
        default=None
    )  # monotonic time the source went down, if it is down


def resolve_rate(rate: Rate, kind: SourceKind) -> Rate:
    if rate is not Rate.AUTO:
        return rate
    return {SourceKind.FILE: Rate.NATIVE, SourceKind.IMAGES: Rate.ALL}.get(kind, Rate.MAX)


class Grabber:
    """Runs a source on its own thread; next() hands out the newest frame not yet taken."""

    def __init__(
        self,
        source: FrameSource,
        rate: Rate = Rate.AUTO,
        fps: float | None = None,
        loop: bool = False,
        reconnect: ReconnectConfig | None = None,
        prepare: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        self.source = source
        self.prepare = prepare
        self.rate = resolve_rate(rate, source.kind)
        self.loop = loop
        self.reconnect = reconnect or ReconnectConfig()
        self.stats = GrabberStats()
        self.error: BaseException | None = None
        self._fps = fps
        self._slot: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="edgegap-grabber", daemon=True)

    # ---- consumer side -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def next(self, timeout: float = 0.5) -> Frame | None:
        """The newest untaken frame, waiting up to timeout; None if none came (check .done)."""
        with self._cond:
            self._cond.wait_for(lambda: self._slot is not None or self._done, timeout)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    def has_frame(self) -> bool:
        """A frame is waiting to be taken."""
        return self._slot is not None

    @property
    def done(self) -> bool:
        """The source ended or failed, and every frame it produced has been taken."""
        with self._cond:
            return self._done and self._slot is None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- grabber thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._open_first()
            self._loop()
        except BaseException as exc:  # handed to the consumer through .error
            self.error = exc
            logger.debug("grabber stopped: %s", exc)
        finally:
            self.source.close()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _open_first(self) -> None:
        try:
            self.source.open()
        except SourceLost as exc:
            if not self.source.live:
                raise SourceError(str(exc)) from exc
            self._reopen(exc)
        logger.info("source: %s (%s rate)", self.source.describe(), self.rate.value)

    def _pace_fps(self) -> float | None:
        if self.rate is not Rate.NATIVE or self.source.live:
            return None
        return self._fps or self.source.fps or DEFAULT_FOLDER_FPS

    def _loop(self) -> None:
        fps = self._pace_fps()
        t_start, paced = time.perf_counter(), 0
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                image = self.source.read()
            except SourceLost as exc:
                if not self.source.live:
                    raise
                self._reopen(exc)
                t_start, paced = time.perf_counter(), 0
                continue
            t1 = time.perf_counter()
            if image is None:
                if self.loop and not self._stop.is_set():
                    logger.info("source ended; looping")
                    self.source.open()
                    t_start, paced = time.perf_counter(), 0
                    continue
                logger.info("source ended after %d frames", self.stats.read)
                return
            prepared, t2 = None, t1
            if self.prepare is not None:
                prepared = self.prepare(image)
                t2 = time.perf_counter()
            frame = Frame(image, self.stats.read, time.time(), t1, t1 - t0, prepared, t2 - t1)
            self.stats.read += 1
            self._put(frame)
            if fps is not None:
                paced += 1
                delay = t_start + paced / fps - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)

    def _put(self, frame: Frame) -> None:
        with self._cond:
            if self.rate is Rate.ALL:
                self._cond.wait_for(lambda: self._slot is None or self._stop.is_set())
            if self._slot is not None:
                self.stats.dropped += 1
            self._slot = frame
            self._cond.notify_all()

    def _reopen(self, cause: BaseException) -> None:
        """Reopen a live source with doubling backoff; raise when max_attempts is spent."""
        self.source.close()
        self.stats.lost_since = time.monotonic()
        delay, attempts, last = self.reconnect.initial_s, 0, cause
        logger.warning("%s; reopening with backoff", cause)
        while not self._stop.is_set():
            if self._stop.wait(delay):
                return
            try:
                self.source.open()
            except (SourceLost, SourceError) as exc:
                attempts += 1
                last = exc
                if self.reconnect.max_attempts and attempts >= self.reconnect.max_attempts:
                    raise SourceLost(
                        f"{self.source.describe()} did not come back after {attempts} attempts: {last}"
                    ) from exc
                delay = min(delay * 2, self.reconnect.max_s)
                logger.warning("reopen attempt %d failed: %s; next in %.1f s", attempts, exc, delay)
                continue
            self.stats.reconnects += 1
            self.stats.lost_since = None
            logger.info("%s is back after %d failed attempt(s)", self.source.describe(), attempts)
            return
