"""The drift signal: rolling statistics of the top score and the detection count per frame, over
the last `window_s` seconds, for the model serving now (a swap starts the window afresh).

It goes out in the retained status as `drift` (docs/protocol.md, "Drift"), so the host sees a
model's scores sag before anyone labels a frame. add() runs on the frame path: an append under a
lock; the sums are made when the status is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MAX_FRAMES = 100_000  # the window holds at most this many frames, whatever the frame rate


class DriftWindow:
    """(time, top score, detections) per frame for one model, trimmed to the window."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._frames: deque[tuple[float, float, int]] = deque(maxlen=MAX_FRAMES)
        self._model: tuple[int, str] | None = None  # (version, sha256) the window is about
        self._lock = threading.Lock()

    def add(self, version: int, sha256: str, top_score: float, detections: int) -> None:
        now = self.clock()
        with self._lock:
            if self._model != (version, sha256):
                self._model = (version, sha256)
                self._frames.clear()
            self._frames.append((now, top_score, detections))

    def snapshot(self) -> dict[str, Any]:
        """The status's `drift` object; zeros while no frame is in the window."""
        now = self.clock()
        with self._lock:
            while self._frames and now - self._frames[0][0] > self.window_s:
                self._frames.popleft()
            rows = list(self._frames)
            model = self._model
        out: dict[str, Any] = {"window_s": float(self.window_s), "frames": len(rows)}
        if model is not None:
            out["version"] = model[0]
        if not rows:
            out.update(top_score_mean=0.0, top_score_p10=0.0, detections_per_frame=0.0)
            return out
        scores = np.fromiter((r[1] for r in rows), np.float64, len(rows))
        counts = np.fromiter((r[2] for r in rows), np.float64, len(rows))
        out["top_score_mean"] = round(float(scores.mean()), 4)
        out["top_score_p10"] = round(float(np.percentile(scores, 10)), 4)
        out["detections_per_frame"] = round(float(counts.mean()), 4)
        return out
