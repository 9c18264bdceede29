"""Probation: the first frames and seconds of a newly served model, watched for trouble.

The pipeline reports every frame (`observe`, on the inference or post thread: it only counts);
the updater thread asks for the `verdict` now and then. An invoke error or a failing decode
fails probation at once; at the end, a median invoke time above latency_factor times the
model's expected latency fails it too.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import dataclass

from agent.bundle.manifest import Manifest
from agent.served import ServedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str


def expected_latency_ms(m: Manifest) -> tuple[float, str] | None:
    """The latency the model should show: the manifest's measured p50, else its profile's budget."""
    measured = m.metrics.get("latency_ms_p50")
    if isinstance(measured, int | float) and not isinstance(measured, bool) and measured > 0:
        return float(measured), "the manifest's latency"
    try:
        from firmware_profiles import ProfileError, load_profile

        budget = load_profile(m.profile).budgets.latency_ms
    except (ImportError, ProfileError) as exc:
        logger.info("no latency to hold %s v%d to: %s", m.name, m.version, exc)
        return None
    return (float(budget), f"profile {m.profile}'s budget") if budget else None


class Probation:
    """Watches one served model until it has served `frames` frames for `seconds` seconds."""

    def __init__(
        self, served: ServedModel, frames: int, seconds: float, latency_factor: float
    ) -> None:
        self.served = served
        self.frames = frames
        self.seconds = seconds
        self.factor = latency_factor
        self.expected = expected_latency_ms(served.manifest)
        self._lock = threading.Lock()
        self._invoke_s: list[float] = []
        self._error: str | None = None
        self._started: float | None = None  # its first frame

    def observe(
        self, served: ServedModel, invoke_s: float | None, error: BaseException | None
    ) -> None:
        if served is not self.served:
            return
        with self._lock:
            if self._started is None:
                self._started = time.monotonic()
            if error is not None and self._error is None:
                what = "invoke" if invoke_s is None else "decode or publish"
                self._error = f"{what} error: {type(error).__name__}: {error}"[:200]
            if error is None and invoke_s is not None:
                self._invoke_s.append(invoke_s)

    def verdict(self) -> Verdict | None:
        """Failed or passed, or None while it goes on."""
        with self._lock:
            if self._error is not None:
                return Verdict(False, self._error)
            started, seen = self._started, len(self._invoke_s)
            if started is None or seen < self.frames or time.monotonic() - started < self.seconds:
                return None
            median_ms = statistics.median(self._invoke_s) * 1000.0
        if self.expected is not None:
            expected, what = self.expected
            if median_ms > self.factor * expected:
                return Verdict(
                    False,
                    f"median latency {median_ms:.2f} ms is over {self.factor:g} x {what} "
                    f"({expected:g} ms)",
                )
        return Verdict(True, f"{seen} frames, median latency {median_ms:.2f} ms")
