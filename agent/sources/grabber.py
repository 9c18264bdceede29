"""The grabber thread: reads a source as frames arrive and keeps only the newest one.

Inference never works on a stale frame: a frame that is replaced before the pipeline takes it
is dropped and counted. A file played at its own rate is paced (frame k is due k / fps after the
start). Lost cameras and streams are reopened with doubling backoff. Given a prepare function,
the grabber also makes each frame's model input right after decoding it, so the inference thread
only invokes (cheap next to the decode, even for frames later dropped).

Time comes from a `Clock`, so pacing can be tested without waiting on the machine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agent.config import Rate, ReconnectConfig, SourceKind
from agent.sources.readers import FrameSource, SourceError, SourceLost

logger = logging.getLogger(__name__)

DEFAULT_FOLDER_FPS = 10.0


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock (the pipeline's latency clock: time.perf_counter)."""
        ...

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Wait seconds, or until stop is set; True if stopped."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.perf_counter()

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        return stop.wait(seconds)


@dataclass(frozen=True, eq=False)
class Prepared:
    """A frame's model input, made on the grabber thread by `by` (a model's pre-processing)."""

    tensor: np.ndarray
    transform: Any  # agent.preprocess.FrameTransform
    by: Any  # the Preprocessor that made it: a swapped-in model makes its own


@dataclass(frozen=True, eq=False)
class Frame:
    image: np.ndarray  # HxWx3 BGR uint8, owned by this frame
    index: int  # position in the source since start: counts dropped frames too
    timestamp: float  # wall-clock capture time (Unix seconds)
    captured: float  # Clock.now() at capture, for latency
    grab_s: float  # time spent reading and decoding this frame
    prepared: Prepared | None = None  # the model input, when the grabber has a prepare function
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
    lost_since: float | None = None  # monotonic time the source went down, if it is down


def resolve_rate(rate: Rate, kind: SourceKind) -> Rate:
    if rate is not Rate.AUTO:
        return rate
    paced = {SourceKind.FILE: Rate.NATIVE, SourceKind.SYNTHETIC: Rate.NATIVE}
    return {**paced, SourceKind.IMAGES: Rate.ALL}.get(kind, Rate.MAX)


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
        clock: Clock | None = None,
    ) -> None:
        self.source = source
        self.prepare = prepare
        self.rate = resolve_rate(rate, source.kind)
        self.loop = loop
        self.reconnect = reconnect or ReconnectConfig()
        self.clock: Clock = clock or SystemClock()
        self.stats = GrabberStats()
        self.error: BaseException | None = None
        self._fps = fps
        self._slot: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="edgegap-grabber", daemon=True)
        self._t_start = 0.0  # pacing of a file played at its own rate: frame k is due at
        self._paced = 0  # _t_start + k / fps
        self._loops = 0

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

    def _restart_pacing(self) -> None:
        """A paced file's next frame is due now (at the start, after a loop or a reopen)."""
        self._t_start, self._paced = self.clock.now(), 0

    # ---- grabber thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._open_first()
            self._restart_pacing()
            while not self._stop.is_set() and (frame := self._read_one()) is not None:
                self._put(frame)
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

    def _read_one(self) -> Frame | None:
        """The source's next frame, once it is due; None when the source has ended or the
        grabber stops. A lost live source is reopened here."""
        fps = self._pace_fps()
        while not self._stop.is_set():
            if fps is not None:
                delay = self._t_start + self._paced / fps - self.clock.now()
                if delay > 0 and self.clock.wait(delay, self._stop):
                    return None
            t0 = self.clock.now()
            try:
                image = self.source.read()
            except SourceLost as exc:
                if not self.source.live:
                    raise
                self._reopen(exc)
                self._restart_pacing()
                continue
            if image is None:
                if self.loop and not self._stop.is_set():
                    self._loops += 1  # said once: a small folder loops many times a second
                    level = logging.INFO if self._loops == 1 else logging.DEBUG
                    logger.log(level, "source ended; looping (pass %d)", self._loops + 1)
                    self.source.open()
                    self._restart_pacing()
                    continue
                logger.info("source ended after %d frames", self.stats.read)
                return None
            self._paced += 1
            return self._frame(image, t0)
        return None

    def _frame(self, image: np.ndarray, t0: float) -> Frame:
        t1 = self.clock.now()
        prepared, t2, by = None, t1, self.prepare
        if by is not None:
            tensor, transform = by(image)
            prepared = Prepared(tensor, transform, by)
            t2 = self.clock.now()
        frame = Frame(image, self.stats.read, time.time(), t1, t1 - t0, prepared, t2 - t1)
        self.stats.read += 1
        return frame

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
            if self.clock.wait(delay, self._stop):
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
