"""Capture on the device: pick frames on the frame path, encode and send them on a thread of
their own.

The frame path (the outputs, on the post thread) only feeds the drift window, asks the policy,
and hands a picked frame to a small queue without waiting: a full queue drops the frame and
counts it. The capture thread scales the frame down, encodes it as JPEG, checks the day's byte
budget, puts it in the on-disk ring, and sends the ring's oldest capture whenever the broker is
there, removing it once the broker has acknowledged every part (QoS 1). A capture can thus arrive
twice (its `id` tells), and none is lost to an outage the ring's bounds can hold.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
from pydantic import ValidationError

from agent.capture.drift import DriftWindow
from agent.capture.message import CaptureError, detections_for, make_header, parse_part, split
from agent.capture.policy import Selector, top_score
from agent.capture.ring import SUFFIX, DiskRing
from agent.config.capture import CaptureConfig, CapturePolicy
from agent.mqtt import MqttLink
from agent.outputs.messages import FrameResult
from agent.outputs.sinks import Sink

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 30.0  # for the broker to acknowledge every part of a capture
RETRY_S = 1.0  # after a failed send
PART_WINDOW = 8  # parts of one capture in flight at once


@dataclass(frozen=True)
class _Job:
    result: FrameResult
    reason: str


class Capturer:
    """The device's capture: policy, drift window, queue, ring and the thread that drains them."""

    def __init__(
        self,
        config: CaptureConfig,
        device_id: str,
        link: MqttLink | None,
        spool_dir: Path,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.link = link
        self.spool_dir = spool_dir
        self.enabled = False
        self.selector = Selector(config.policy, rng, clock)
        self.drift = DriftWindow(config.drift_window_s, clock)
        self.ring: DiskRing | None = None
        self.sent = 0
        self.dropped = 0  # frames the full queue turned away (the ring counts its own)
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=config.queue)
        self._previous: FrameResult | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if config.enabled:
            self.set_enabled(True)
        elif any(spool_dir.glob(f"*{SUFFIX}")):  # left from a run with capture on: still sent
            self._open_ring()

    # ---- the frame path -------------------------------------------------------------------
    def offer(self, result: FrameResult) -> None:
        """Called for every frame's result; never waits."""
        dets, m = result.detections, result.model
        self.drift.add(m.version, m.sha256, top_score(dets), len(dets))
        previous, self._previous = self._previous, result
        if not self.enabled:
            return
        pick = self.selector.consider(dets)
        if pick is None:
            return
        chosen = result if pick.index == 0 else previous
        if chosen is None:
            return
        try:
            self._queue.put_nowait(_Job(chosen, pick.reason))
        except queue.Full:
            self.dropped += 1

    # ---- control (commands, any thread) -----------------------------------------------------
    def set_enabled(self, on: bool) -> None:
        """Switch capture on (opening the ring: OSError if its folder cannot be made) or off."""
        if on and self.ring is None:
            self._open_ring()
        if on and not self.enabled:
            self.selector.forget_frames()
        self.enabled = on
        logger.info("capture %s", "on" if on else "off")

    def _open_ring(self) -> None:
        c = self.config
        self.ring = DiskRing(self.spool_dir, c.spool_max_files, c.spool_max_bytes)

    def set_policy(self, changes: dict[str, Any]) -> CapturePolicy:
        """Replace the given policy keys; ValueError (the reason) when the result is not valid."""
        merged = {**self.selector.policy.model_dump(), **changes}
        try:
            policy = CapturePolicy.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(["policy", *(str(p) for p in first["loc"])])
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise ValueError(f"{where}: {msg}") from exc
        self.selector.policy = policy
        logger.info("capture policy set: %s", policy.model_dump())
        return policy

    def status(self) -> dict[str, Any]:
        """The status message's `drift` and `captures`."""
        ring = self.ring
        counts = self.selector.counts
        captures = {
            "enabled": self.enabled,
            "sent": self.sent,
            "dropped": self.dropped + (ring.dropped if ring is not None else 0),
            "waiting": len(ring) if ring is not None else 0,
            "capped": counts.capped,
            "bytes_24h": self.selector.bytes_today(),
        }
        return {"drift": self.drift.snapshot(), "captures": captures}

    # ---- the capture thread -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgegap-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; captures not yet sent stay in the ring for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                job = None
            try:
                if job is not None:
                    self._encode(job)
                self._send_one()
            except Exception:  # one bad capture must not end capturing
                logger.exception("capture step failed")
                self._stop.wait(RETRY_S)

    def _encode(self, job: _Job) -> None:
        ring = self.ring
        if ring is None:
            return
        frame = job.result.frame
        image, scale = _scaled(frame.image, self.config.max_side)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise OSError("JPEG encoding failed")
        jpeg = buf.tobytes()
        if not self.selector.admit_bytes(len(jpeg)):
            return
        self._seq += 1
        capture_id = f"{int(frame.timestamp * 1000)}-{self._seq}"
        header = make_header(
            capture_id, self.device_id, frame.timestamp, job.reason, job.result.model,
            detections_for(job.result.detections, scale), jpeg, (image.shape[1], image.shape[0]),
        )  # fmt: skip
        try:
            ring.put(split(header, jpeg, len(jpeg) + 1)[0])
        except (
            OSError
        ) as exc:  # disk full, spool removed: this capture is lost, the next may not be
            ring.dropped += 1
            logger.warning("capture: cannot spool a capture: %s", exc)

    def _send_one(self) -> bool:
        """Send the ring's oldest capture if the broker is there; True if one went out."""
        ring, link = self.ring, self.link
        if ring is None or link is None or not len(ring) or not link.connected:
            return False
        data = ring.oldest()
        if data is None:
            return False
        try:
            header, jpeg = parse_part(data)
            payloads = split(header, jpeg, self.config.chunk_size)
        except CaptureError as exc:
            logger.warning("capture: a spooled capture is unreadable (%s); dropped", exc)
            ring.pop_oldest()
            ring.dropped += 1
            return False
        topic = link.topics.device(self.device_id, "captures")
        if not _publish_all(link.client, topic, payloads, self._stop):
            self._stop.wait(RETRY_S)
            return False
        ring.pop_oldest()
        self.sent += 1
        return True


def _publish_all(
    client: paho.Client, topic: str, payloads: list[bytes], stop: threading.Event
) -> bool:
    """Publish at QoS 1, PART_WINDOW parts in flight at most (paho's queue is shared with the
    detections and bounded), waiting for every PUBACK; False if any part did not make it in
    SEND_TIMEOUT_S, or stop was set meanwhile."""
    deadline = time.monotonic() + SEND_TIMEOUT_S
    for start in range(0, len(payloads), PART_WINDOW):
        infos = [client.publish(topic, p, qos=1) for p in payloads[start : start + PART_WINDOW]]
        for info in infos:
            try:
                while not info.is_published():
                    if stop.is_set() or time.monotonic() >= deadline:
                        return False
                    info.wait_for_publish(0.1)
            except (RuntimeError, ValueError) as exc:  # not queued: no connection, queue full
                logger.debug("capture: a part was not sent: %s", exc)
                return False
    return True


def _scaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """image scaled down so its longer side is at most max_side, and the scale used."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


class CaptureSink(Sink):
    """Hands every frame's result to the capturer (and its drift window)."""

    name = "capture"

    def __init__(self, capturer: Capturer) -> None:
        super().__init__()
        self.capturer = capturer

    def write(self, result: FrameResult, payload: bytes) -> None:
        try:
            self.capturer.offer(result)
        except Exception:  # capture is a bystander: its failure must not fail the frame
            self.errors += 1
            if self.errors == 1:
                logger.exception("capture failed on a frame; the frame goes on (logged once)")
