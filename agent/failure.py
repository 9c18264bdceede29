"""When failing frames stop being a passing fault: the decoder (or publishing) failed K frames in a
row, health turns `failed`, an event says why, and after a configured time in that state the
agent exits non-zero so systemd, or the store's rollback, can act. A run in which every frame
failed never ends as a success either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)


class ServingFailed(EdgegapError, RuntimeError):
    """The model's frames keep failing: serving it is not working (exit 1; a restart may help)."""


class FailureWatch:
    """Counts failing frames in a row. Told from the post thread; asked from the inference one."""

    def __init__(
        self,
        after_frames: int,
        exit_after_s: float,
        on_failed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.after_frames = after_frames
        self.exit_after_s = exit_after_s
        self.on_failed = on_failed
        self._clock = clock
        self._lock = threading.Lock()
        self.in_a_row = 0
        self.reason = ""  # the newest failure's reason
        self.failed_since: float | None = None  # when health turned failed; None while it is not

    @property
    def failed(self) -> bool:
        return self.failed_since is not None

    def frame_failed(self, exc: BaseException) -> None:
        with self._lock:
            self.in_a_row += 1
            self.reason = f"{type(exc).__name__}: {exc}"
            turned = self.failed_since is None and self.in_a_row >= self.after_frames
            if turned:
                self.failed_since = self._clock()
        if turned:
            logger.error(
                "health failed: %d frames in a row failed; last: %s", self.in_a_row, self.reason
            )
            if self.on_failed is not None:
                self.on_failed(self.summary())

    def frame_ok(self) -> None:
        with self._lock:
            if self.failed_since is not None:
                logger.info("frames work again; health leaves failed")
            self.in_a_row, self.failed_since = 0, None

    def summary(self) -> str:
        return f"{self.in_a_row} frames in a row failed; last: {self.reason}"

    def check(self) -> None:
        """Raise ServingFailed once health has been failed for exit_after_s."""
        since = self.failed_since
        if since is not None and self._clock() - since >= self.exit_after_s:
            raise ServingFailed(
                f"decoding failed for {self._clock() - since:.1f} s ({self.summary()})"
            )


def check_run(frames: int, failed: int, reason: str) -> None:
    """A run that failed every frame it inferred is no success, whatever stopped it."""
    if failed and not frames:
        raise ServingFailed(f"every frame failed ({failed} frames); last: {reason}")
