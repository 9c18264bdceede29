"""The capture policy as pure logic: which frames are worth learning from, within the rate caps.

A frame is picked for the first reason that holds, in this order:
- `uncertain`: its top detection score is in the policy's band;
- `flicker`: a label present in the frames before and after it is missing from it, or a label
  absent from both is present in it (one frame late: the frame judged is the middle one of three);
- `sample`: a random draw at the policy's sample rate.

Caps: at most `max_per_minute` captures in any 60 s, spread out: at most
ceil(max_per_minute / 60) of them in any 1 s (so the encoder never runs flat out for a burst and
takes a core from inference); and at most `max_bytes_per_day` JPEG bytes in any 24 h. A frame picked over a cap is counted (`capped`) and not captured. The clock is injected, so
tests run on a fake one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.config.capture import CapturePolicy
from agent.decoders.base import Detection

logger = logging.getLogger(__name__)

MINUTE_S = 60.0
SECOND_S = 1.0
DAY_S = 86_400.0
REASONS = ("uncertain", "flicker", "sample")


def top_score(detections: Sequence[Detection]) -> float:
    """The highest score among the detections; 0.0 for none."""
    return max((d.score for d in detections), default=0.0)


@dataclass
class Pick:
    """A frame the policy picked: why, and the detections of the frame it names."""

    reason: str
    detections: list[Detection]
    index: int  # 0: the frame just seen; 1: the one before it (flicker is judged one frame late)


@dataclass
class SelectorCounts:
    picked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    capped: int = 0  # picked, but a cap said no


class Selector:
    """Decides, frame by frame, whether to capture; keeps the caps' sliding windows."""

    def __init__(
        self,
        policy: CapturePolicy,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.rng = rng or random.Random()
        self.clock = clock
        self.counts = SelectorCounts()
        self._recent: deque[frozenset[str]] = deque(maxlen=3)  # label sets, oldest first
        self._previous: list[Detection] = []
        self._minute: deque[float] = deque()  # times of captures in the last minute
        self._day: deque[tuple[float, int]] = deque()  # (time, bytes) in the last day
        self._day_bytes = 0
        self._lock = (
            threading.Lock()
        )  # consider() on the frame path, admit_bytes() on the encoder's

    def forget_frames(self) -> None:
        """Forget the frames seen (capture was off: the next frames do not follow them)."""
        self._recent.clear()
        self._previous = []

    def consider(self, detections: list[Detection]) -> Pick | None:
        """Whether to capture now, and which frame: the one just seen (or, for flicker, the one
        before it). Counts what it picked; a pick over a cap is counted and refused."""
        labels = frozenset(d.label for d in detections)
        self._recent.append(labels)
        previous, self._previous = self._previous, detections
        pick = self._pick(detections, previous)
        if pick is None:
            return None
        self.counts.picked[pick.reason] += 1
        now = self.clock()
        p = self.policy
        with self._lock:
            self._expire(now)
            if (
                len(self._minute) >= p.max_per_minute
                or _count_since(self._minute, now - SECOND_S) >= -(-p.max_per_minute // 60)
                or self._day_bytes >= p.max_bytes_per_day
            ):
                self.counts.capped += 1
                return None
            self._minute.append(now)
        return pick

    def _pick(self, detections: list[Detection], previous: list[Detection]) -> Pick | None:
        p = self.policy
        low, high = p.band
        if detections and low <= top_score(detections) < high:
            return Pick("uncertain", detections, 0)
        if p.flicker and len(self._recent) == 3 and _flickered(*self._recent):
            return Pick("flicker", previous, 1)
        if p.sample_rate > 0 and self.rng.random() < p.sample_rate:
            return Pick("sample", detections, 0)
        return None

    def admit_bytes(self, size: int) -> bool:
        """Whether an encoded capture of size bytes fits the day's budget; if so it is spent."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            if self._day_bytes + size > self.policy.max_bytes_per_day:
                self.counts.capped += 1
                return False
            self._day.append((now, size))
            self._day_bytes += size
        return True

    def _expire(self, now: float) -> None:
        while self._minute and now - self._minute[0] >= MINUTE_S:
            self._minute.popleft()
        while self._day and now - self._day[0][0] >= DAY_S:
            self._day_bytes -= self._day.popleft()[1]

    def bytes_today(self) -> int:
        """JPEG bytes captured in the last 24 h."""
        return self._day_bytes


def _count_since(times: deque[float], since: float) -> int:
    """How many of the (ascending) times are after since."""
    n = 0
    for t in reversed(times):
        if t <= since:
            break
        n += 1
    return n


def _flickered(before: frozenset[str], middle: frozenset[str], after: frozenset[str]) -> bool:
    """A label in both neighbours but not in the middle, or in the middle but in neither."""
    return bool(((before & after) - middle) or (middle - before - after))
