"""What a rollout controller reads from the broker, collected on paho's thread: every device's
retained and live status, the update events, and the channel's stable release.

The streams use wildcard filters (devices/+/..., models/<channel>/+) on purpose: reading one
exact topic with Connection.read_retained unsubscribes that filter, and must not end a stream."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from agent.bounded_json import parse_object
from agent.updates.protocol import Limits, ProtocolError, Release, Topics, parse_release
from converter.broker_client import Connection
from converter.fleet import MAX_EVENT_BYTES, MAX_STATUS_BYTES
from converter.rollout.bounds import Sample
from converter.rollout.record import MAX_RECORD_BYTES

SETTLE_S = 0.5  # retained messages arrive just after the SUBACK
MAX_PENDING = 10_000


@dataclass(frozen=True)
class Seen:
    sample: Sample
    arrived: float  # time.time() when it arrived


class Feed:
    """Thread-safe latest state; `take_*` hand what is new to the controller's thread."""

    def __init__(self, topics: Topics, channel: str) -> None:
        self.topics = topics
        self.channel = channel
        self._lock = threading.Lock()
        self._latest: dict[str, Seen] = {}
        self._new: dict[str, list[Seen]] = {}
        self._events: list[tuple[dict[str, Any], float]] = []
        self.stable: Release | None = None
        self.mine: str | None = None  # the model of the rollout this feed serves
        self._mine_seen = False
        self.replaced = False  # a record about another model followed ours

    def open(self, conn: Connection) -> None:
        t, c = self.topics, self.channel
        conn.stream(t.devices("status"), self._on_status, retained=True)
        conn.stream(t.devices("events"), self._on_event)
        conn.stream(f"{t.prefix}/models/{c}/+", self._on_release, retained=True)
        time.sleep(SETTLE_S)

    def _on_status(self, topic: str, raw: bytes) -> None:
        if not raw:
            return
        try:
            status = parse_object(raw, MAX_STATUS_BYTES, "status")
        except ValueError:
            return
        seen = Seen(Sample.of(status), time.time())
        device = topic.split("/")[-2]
        with self._lock:
            self._latest[device] = seen
            pending = self._new.setdefault(device, [])
            if len(pending) < MAX_PENDING:
                pending.append(seen)

    def _on_event(self, topic: str, raw: bytes) -> None:
        try:
            event = parse_object(raw, MAX_EVENT_BYTES, "event")
        except ValueError:
            return
        event["device_id"] = topic.split("/")[-2]
        with self._lock:
            if len(self._events) < MAX_PENDING:
                self._events.append((event, time.time()))

    def _on_release(self, topic: str, raw: bytes) -> None:
        if topic == self.topics.rollout(self.channel):
            self._on_record(raw)
            return
        if topic != self.topics.release(self.channel):
            return
        release = None
        if raw:
            try:
                release = parse_release(raw, Limits())
            except ProtocolError:
                release = None
        with self._lock:
            self.stable = release

    def _on_record(self, raw: bytes) -> None:
        """Only which rollout the retained record is about: once it has been about `mine`, a
        record about another model means a newer rollout replaced ours (latched)."""
        try:
            head = parse_object(raw, MAX_RECORD_BYTES, "rollout record") if raw else {}
        except ValueError:
            return
        sha = head.get("sha256")
        with self._lock:
            if self.mine is not None and sha == self.mine:
                self._mine_seen = True
            elif self._mine_seen:
                self.replaced = True

    def latest(self, device: str) -> Seen | None:
        with self._lock:
            return self._latest.get(device)

    def devices(self) -> dict[str, Seen]:
        with self._lock:
            return dict(self._latest)

    def take_samples(self, device: str) -> list[Seen]:
        with self._lock:
            return self._new.pop(device, [])

    def take_events(self) -> list[tuple[dict[str, Any], float]]:
        with self._lock:
            out, self._events = self._events, []
        return out

    def canaries(self) -> dict[str, Sample]:
        """The online canary devices of the channel, from their latest status."""
        return {
            d: s.sample
            for d, s in self.devices().items()
            if s.sample.online and s.sample.channel == self.channel and s.sample.group == "canary"
        }

    def stable_samples(self, sha256: str) -> list[Sample]:
        """The online stable devices of the channel that serve sha256."""
        return [
            s.sample
            for s in self.devices().values()
            if s.sample.online
            and s.sample.channel == self.channel
            and s.sample.group == "stable"
            and s.sample.sha256 == sha256
        ]
