"""Where results go: MQTT (rate-limited or on change, as configured), a JSONL file, annotated
frames on disk, and the preview page. With no broker configured, only local outputs run.

An output that fails (disk full, broker away) is logged and counted; it never stops inference.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO

import cv2

from agent.config import PublishConfig, PublishMode
from agent.decoders.base import Detection
from agent.mqtt import MqttLink
from agent.outputs.messages import DetectionsEncoder, FrameResult, ModelRef
from agent.outputs.preview import PreviewServer, draw_detections

logger = logging.getLogger(__name__)


class PublishPolicy:
    """Decides whether a frame's detections go out: every frame, once per interval, or on change."""

    def __init__(self, config: PublishConfig) -> None:
        self.config = config
        self._last_time: float | None = None
        self._last: list[Detection] | None = None

    def should_publish(self, detections: list[Detection], now: float) -> bool:
        mode = self.config.mode
        if mode is PublishMode.EVERY:
            send = True
        elif mode is PublishMode.INTERVAL:
            send = self._last_time is None or now - self._last_time >= self.config.interval_s
        else:
            send = (
                self._last is None
                or self._last_time is None
                or now - self._last_time >= self.config.heartbeat_s
                or self.changed(self._last, detections)
            )
        if send:
            self._last_time, self._last = now, detections
        return send

    def changed(self, before: list[Detection], after: list[Detection]) -> bool:
        """A label appeared or vanished, or a box moved so it overlaps its old self less than change_iou."""
        if sorted(d.label for d in before) != sorted(d.label for d in after):
            return True
        unmatched = list(before)
        for d in after:
            best, best_iou = None, -1.0
            for old in unmatched:
                if old.label != d.label:
                    continue
                iou = 1.0 if d.box is None or old.box is None else d.box.iou(old.box)
                if iou > best_iou:
                    best, best_iou = old, iou
            if best is None or best_iou < self.config.change_iou:
                return True
            unmatched.remove(best)
        return False


class Sink(ABC):
    name: str = "sink"

    def __init__(self) -> None:
        self.errors = 0

    @abstractmethod
    def write(self, result: FrameResult, payload: bytes) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release."""


class JsonlSink(Sink):
    """Appends one detections message per processed frame."""

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: IO[bytes] | None = path.open("ab", buffering=0)

    def write(self, result: FrameResult, payload: bytes) -> None:
        if self._fh is not None:
            self._fh.write(payload + b"\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class MqttSink(Sink):
    """Publishes detections to the broker, as the publish policy allows."""

    name = "mqtt"

    def __init__(self, link: MqttLink, policy: PublishPolicy) -> None:
        super().__init__()
        self.link = link
        self.policy = policy

    def write(self, result: FrameResult, payload: bytes) -> None:
        if self.policy.should_publish(result.detections, time.monotonic()):
            self.link.publish_detections(payload)


class AnnotatedFramesSink(Sink):
    """Writes every n-th frame as a JPEG with its boxes drawn."""

    name = "annotated"

    def __init__(self, directory: Path, every: int = 1) -> None:
        super().__init__()
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.every = every
        self._count = 0

    def write(self, result: FrameResult, payload: bytes) -> None:
        self._count += 1
        if (self._count - 1) % self.every:
            return
        path = self.directory / f"frame{result.frame.index:06d}.jpg"
        if not cv2.imwrite(str(path), draw_detections(result.frame.image, result.detections)):
            raise OSError(f"cannot write {path}")


class PreviewSink(Sink):
    name = "preview"

    def __init__(self, server: PreviewServer) -> None:
        super().__init__()
        self.server = server

    def write(self, result: FrameResult, payload: bytes) -> None:
        self.server.update(result.frame.image, result.detections)


class Outputs:
    """Encodes each result once and fans it out to every sink; a failing sink is logged (once
    per streak) and skipped."""

    def __init__(
        self, sinks: list[Sink], device_id: str = "device", fleet: str = "default"
    ) -> None:
        self.sinks = sinks
        self.device_id, self.fleet = device_id, fleet
        self._failing: set[str] = set()
        self._encoder: tuple[ModelRef, DetectionsEncoder] | None = None

    def encode(self, result: FrameResult) -> bytes:
        """The detections message for result (its model's encoder is made on first use)."""
        made = self._encoder
        if made is None or made[0] is not result.model:
            made = self._encoder = (
                result.model,
                DetectionsEncoder(self.device_id, self.fleet, result.model),
            )
        return made[1](result, time.time())

    def publish(self, result: FrameResult) -> None:
        """Encode result and write it to every sink."""
        self.write(result, self.encode(result))

    def write(self, result: FrameResult, payload: bytes) -> None:
        for sink in self.sinks:
            try:
                sink.write(result, payload)
            except OSError as exc:
                sink.errors += 1
                if sink.name not in self._failing:
                    logger.error("output %s failed: %s (inference goes on)", sink.name, exc)
                    self._failing.add(sink.name)
                continue
            if sink.name in self._failing:
                logger.info("output %s works again", sink.name)
                self._failing.discard(sink.name)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except OSError as exc:
                logger.error("output %s did not close cleanly: %s", sink.name, exc)
