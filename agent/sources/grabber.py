"""The grabber thread: reads a source as frames arrive and keeps only the newest one.

Inference never works on a stale frame: a frame that is replaced before the pipeline takes it
is dropped and counted. Lost cameras and streams are reopened with doubling backoff. Given a
prepare function, the grabber also makes each frame's model input right after decoding it, so
the inference thread only invokes (cheap next to the decode, even for frames later dropped).

Inline reads. When the consumer keeps up easily with a paced or live source (it is busy for at
most half a frame interval, several frames running), waiting on the grabber thread only adds a
thread hand-off to every frame's latency. The grabber thread then parks and next() reads the
source on the consumer's own thread: the frame it returns is still the newest, because nothing
can queue up behind a consumer that is idle when the frame arrives. As soon as one frame keeps
the consumer busy for most of an interval, the grabber thread takes over again and stale frames
are dropped as before. A live source lost during an inline read is reopened by the grabber thread.

Prewarming. A consumer that reads inline sits idle between frames, and its per-frame code and
data go cold meanwhile. Given a prewarm function, next() calls it shortly before the next frame
is due, so the frame's own pass finds them in cache: `lead` seconds before a paced file's frame
falls due, and for a live source a quarter of its interval (plus `lead`) before the frame it
predicts from the measured interval, and only while that interval is steady.
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
from agent.sources.readers import FrameSource, SourceError, SourceLost

logger = logging.getLogger(__name__)

DEFAULT_FOLDER_FPS = 10.0
INLINE_AFTER = 5  # consecutive quick frames before reads move to the consumer's thread
INLINE_SHARE = 0.5  # quick: the consumer was busy for at most this share of a frame interval
THREAD_SHARE = 0.8  # one frame busier than this share of an interval brings the thread back
LIVE_MARGIN = 0.25  # share of a live source's interval to prewarm ahead of its predicted frame
STEADY_JITTER = 0.1  # a live source is steady while its intervals vary by at most this share


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
    captured: float  # perf_counter() at capture, for latency
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
    inline: int = 0  # frames read on the consumer's thread
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
        inline: bool = True,
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
        # Pacing of a file played at its own rate: frame k is due at t_start + k / fps.
        self._t_start = 0.0
        self._paced = 0
        self._last_arrival: float | None = None
        self._arrival_s: float | None = None  # a live source's frame interval (moving average)
        self._jitter_s = 0.0  # ... and how much its intervals vary (moving mean abs. deviation)
        self._prewarm: Callable[[], None] | None = None
        self._prewarm_lead = 0.0
        # Inline reads (see the module docstring); the consumer's side of the hand-shake.
        self._inline_ok = inline and self.rate is not Rate.ALL
        self._want_inline = False  # asked by the consumer
        self._parked = False  # the grabber thread is parked, the consumer reads
        self._lost: SourceLost | None = None  # a live source lost during an inline read
        self._io = threading.Lock()  # a read and the final close never overlap
        self._quick = 0
        self._taken_at: float | None = None

    # ---- consumer side -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def next(self, timeout: float = 0.5) -> Frame | None:
        """The newest untaken frame, waiting up to timeout; None if none came (check .done)."""
        self._observe_consumer()
        if self._parked and self._want_inline:
            frame = self._next_inline(timeout)
        else:
            with self._cond:
                self._cond.wait_for(lambda: self._slot is not None or self._done, timeout)
                frame, self._slot = self._slot, None
                self._cond.notify_all()
        if frame is not None:
            self._taken_at = time.perf_counter()
        return frame

    def set_prewarm(self, fn: Callable[[], None] | None, lead_s: float = 0.0) -> None:
        """Call fn on the consumer's thread, lead_s before each inline read's frame is due."""
        self._prewarm, self._prewarm_lead = fn, lead_s

    @property
    def reading_inline(self) -> bool:
        """Frames are being read on the consumer's thread."""
        return self._parked and self._want_inline

    def frame_interval(self) -> float | None:
        """Seconds between the source's frames: its pace, or as measured for a live source."""
        fps = self._pace_fps()
        if fps is not None:
            return 1.0 / fps
        return self._arrival_s if self.source.live else None

    def _observe_consumer(self) -> None:
        """Move reads to the consumer's thread, or back, by how busy the last frame kept it."""
        if not self._inline_ok or self._taken_at is None:
            return
        interval = self.frame_interval()
        if interval is None:
            return
        busy = time.perf_counter() - self._taken_at
        self._taken_at = None
        self._quick = self._quick + 1 if busy <= INLINE_SHARE * interval else 0
        # Once inline, one busy frame is enough to hand reads back to the grabber thread.
        want = busy <= THREAD_SHARE * interval if self._want_inline else self._quick >= INLINE_AFTER
        if want != self._want_inline:
            logger.debug("reads move to the %s thread", "consumer's" if want else "grabber")
            self._quick = 0
            self._set_inline(want)

    def _set_inline(self, want: bool) -> None:
        with self._cond:
            self._want_inline = want
            self._cond.notify_all()

    def _next_inline(self, timeout: float) -> Frame | None:
        with self._cond:
            if self._slot is not None:  # put just before the grabber thread parked
                waiting, self._slot = self._slot, None
                return waiting
        fps = self._pace_fps()
        if fps is not None:
            delay = self._t_start + self._paced / fps - time.perf_counter()
            if delay > timeout:  # come back later: the caller checks its stop flag meanwhile
                self._stop.wait(timeout)
                return None
        self._maybe_prewarm(timeout)
        frame: Frame | None = None
        try:
            frame = self._read_one(reopen=False, prepare=False)
        except SourceLost as exc:  # the grabber thread reopens a live source, with backoff
            if not self.source.live:
                self.error = exc
                self._end_inline()
                return None
            with self._cond:
                self._lost = exc
                self._want_inline = False
                self._cond.notify_all()
            return None
        except BaseException as exc:
            self.error = exc
        if frame is None:
            self._end_inline()
            return None
        self.stats.inline += 1
        return frame

    def _maybe_prewarm(self, timeout: float) -> None:
        """Wait until shortly before the next frame is due, then prewarm; skipped when that
        time is unknown, already past, or further off than timeout."""
        if self._prewarm is None:
            return
        at = self._prewarm_at()
        if at is None:
            return
        wait = at - time.perf_counter()
        if wait <= 0 or wait > timeout or self._stop.wait(wait):
            return
        self._prewarm()

    def _prewarm_at(self) -> float | None:
        """perf_counter() time to prewarm for the next frame, when it can be told."""
        fps = self._pace_fps()
        if fps is not None:
            return self._t_start + self._paced / fps - self._prewarm_lead
        interval, last = self._arrival_s, self._last_arrival
        if not self.source.live or interval is None or last is None:
            return None
        if self._jitter_s > STEADY_JITTER * interval:
            return None
        return last + (1.0 - LIVE_MARGIN) * interval - self._prewarm_lead

    def _end_inline(self) -> None:
        """The source ended (or failed) during an inline read; the parked thread exits."""
        with self._cond:
            self._done = True
            self._cond.notify_all()

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
            with self._io:  # a consumer reading inline finishes its read first
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
        self._restart_pacing()
        while not self._stop.is_set():
            if self._park_while_inline():
                if self._done:
                    return
                continue
            frame = self._read_one(reopen=True)
            if frame is None:
                return
            self._put(frame)

    def _park_while_inline(self) -> bool:
        """Park while the consumer reads inline; True if the thread parked."""
        with self._cond:
            if not self._want_inline:
                return False
            self._parked = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._want_inline or self._done or self._stop.is_set())
            self._parked = False
            lost, self._lost = self._lost, None
        if lost is not None:
            self._reopen(lost)
            self._restart_pacing()
        return True

    def restart_pacing(self) -> None:
        """A paced file's next frame is due now. For a consumer that paused on purpose (a
        benchmark between its blocks): the frames that fell due meanwhile are not caught up on."""
        self._restart_pacing()

    def _restart_pacing(self) -> None:
        self._t_start, self._paced = time.perf_counter(), 0

    def _read_one(self, reopen: bool, prepare: bool = True) -> Frame | None:
        """The source's next frame, once it is due; None when the source has ended.

        A lost live source is reopened here (reopen=True) or raises SourceLost. With prepare,
        the model input is made too; an inline read leaves that to the consumer, which writes it
        straight into the interpreter's input buffer instead of copying it there.
        """
        fps = self._pace_fps()
        while not self._stop.is_set():
            if fps is not None:
                delay = self._t_start + self._paced / fps - time.perf_counter()
                if delay > 0 and self._stop.wait(delay):
                    return None
            t0 = time.perf_counter()
            try:
                with self._io:
                    image = self.source.read()
            except SourceLost as exc:
                if not self.source.live or not reopen:
                    raise
                self._reopen(exc)
                self._restart_pacing()
                continue
            t1 = time.perf_counter()
            if image is None:
                if self.loop and not self._stop.is_set():
                    logger.info("source ended; looping")
                    self.source.open()
                    self._restart_pacing()
                    continue
                logger.info("source ended after %d frames", self.stats.read)
                return None
            self._paced += 1
            self._note_arrival(t1)
            prepared, t2, by = None, t1, self.prepare
            if prepare and by is not None:
                tensor, transform = by(image)
                prepared = Prepared(tensor, transform, by)
                t2 = time.perf_counter()
            frame = Frame(image, self.stats.read, time.time(), t1, t1 - t0, prepared, t2 - t1)
            self.stats.read += 1
            return frame
        return None

    def _note_arrival(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            if self._arrival_s is None:
                self._arrival_s = gap
            else:
                self._jitter_s = 0.8 * self._jitter_s + 0.2 * abs(gap - self._arrival_s)
                self._arrival_s = 0.8 * self._arrival_s + 0.2 * gap
        self._last_arrival = now

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
