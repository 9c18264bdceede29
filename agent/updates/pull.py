"""Pulling one model's chunks: a sliding window of chunk subscriptions, each chunk checked and
staged on disk as it arrives, a chunk that does not come asked for again with doubling backoff.

Driven by the updater thread alone: `start()`, then `on_chunk()` for each chunk message and
`tick()` now and then. The broker delivers a chunk's retained copy on subscribe, so "asking
again" is unsubscribing and subscribing. Time spent disconnected does not count against a chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.store import Staging, StoreError
from agent.updates.checks import Rejected
from agent.updates.protocol import Release, Topics

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0


class Subscriptions(Protocol):
    """The part of the MQTT link a pull uses (agent.mqtt.MqttLink)."""

    connects: int

    @property
    def connected(self) -> bool: ...

    def subscribe(self, topic: str, qos: int = 1) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...


@dataclass(frozen=True)
class PullSettings:
    window: int
    chunk_timeout_s: float
    max_retries: int


@dataclass
class _Wait:
    deadline: float
    retries: int = 0


class Pull:
    """One blob's download into its staging directory."""

    def __init__(
        self,
        release: Release,
        staging: Staging,
        link: Subscriptions,
        topics: Topics,
        settings: PullSettings,
        progress: Callable[[int, int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.release = release
        self.blob = release.blob
        self.staging = staging
        self._link = link
        self._topics = topics
        self._settings = settings
        self._progress = progress
        self._clock = clock
        self._todo = staging.missing()  # re-checks what a previous run staged
        self._waiting: dict[int, _Wait] = {}
        self._connects = link.connects
        self._last_progress = 0.0
        self.resumed = self.blob.chunks - len(self._todo)

    @property
    def sha256(self) -> str:
        return self.blob.sha256

    @property
    def done(self) -> bool:
        return not self._todo and not self._waiting

    @property
    def have(self) -> int:
        return self.blob.chunks - len(self._todo) - len(self._waiting)

    def start(self) -> None:
        if self.resumed:
            logger.info(
                "resuming %s…: %d of %d chunks already staged",
                self.sha256[:12],
                self.resumed,
                self.blob.chunks,
            )
        self._fill()

    def stop(self) -> None:
        """Drop every chunk subscription (the staged chunks stay for a later resume)."""
        for index in list(self._waiting):
            self._link.unsubscribe(self._topics.chunk(self.sha256, index))
        self._waiting.clear()

    def on_chunk(self, index: int, data: bytes) -> None:
        """A chunk message; raises Rejected when it is not the chunk the release lists."""
        if index not in self._waiting:
            return  # a duplicate, or one we stopped waiting for
        self._link.unsubscribe(self._topics.chunk(self.sha256, index))
        del self._waiting[index]
        try:
            self.staging.put(index, data)
        except StoreError as exc:
            self.stop()
            m = self.release.manifest
            raise Rejected(str(exc), m.version, self.sha256) from exc
        self._fill()
        now = self._clock()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self._progress(self.have, self.blob.chunks)

    def tick(self) -> None:
        """Ask again for chunks overdue; raises Rejected after max_retries for one of them."""
        now = self._clock()
        if not self._link.connected or self._link.connects != self._connects:
            # an outage: the window is subscribed again on reconnect; its clocks start anew
            self._connects = self._link.connects
            for wait in self._waiting.values():
                wait.deadline = now + self._timeout(wait.retries)
            return
        for index, wait in self._waiting.items():
            if now < wait.deadline:
                continue
            if wait.retries >= self._settings.max_retries:
                self.stop()
                m = self.release.manifest
                raise Rejected(f"chunk {index} never arrived", m.version, self.sha256)
            wait.retries += 1
            wait.deadline = now + self._timeout(wait.retries)
            logger.warning(
                "chunk %d of %s… not here; asking again (%d/%d)",
                index,
                self.sha256[:12],
                wait.retries,
                self._settings.max_retries,
            )
            topic = self._topics.chunk(self.sha256, index)
            self._link.unsubscribe(topic)
            self._link.subscribe(topic)

    def _fill(self) -> None:
        now = self._clock()
        while self._todo and len(self._waiting) < self._settings.window:
            index = self._todo.pop(0)
            self._waiting[index] = _Wait(now + self._timeout(0))
            self._link.subscribe(self._topics.chunk(self.sha256, index))

    def _timeout(self, retries: int) -> float:
        return self._settings.chunk_timeout_s * (2**retries)
