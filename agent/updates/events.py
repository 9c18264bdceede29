"""Update events on devices/<id>/events, published in order from the updater thread."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Protocol

from agent.updates.protocol import EventKind, event

logger = logging.getLogger(__name__)


class EventLink(Protocol):
    def publish_event(self, event: dict[str, Any]) -> None: ...


class Events:
    """Builds and publishes events; the newest are kept for the log and for tests."""

    def __init__(self, link: EventLink | None, device_id: str, keep: int = 256) -> None:
        self._link = link
        self.device_id = device_id
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def emit(
        self, kind: EventKind, version: int | None = None, sha256: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        msg = event(kind, self.device_id, time.time(), version, sha256, **extra)
        level = (
            logging.WARNING if kind in (EventKind.REJECTED, EventKind.ROLLED_BACK) else logging.INFO
        )
        details = " ".join(f"{k}={v}" for k, v in extra.items() if v is not None)
        logger.log(level, "update event %s v%s %s", kind.value, version, details)
        self.recent.append(msg)
        if self._link is not None:
            self._link.publish_event(msg)
        return msg
