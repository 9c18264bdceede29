"""What `edgegap fleet` and `edgegap gc` read from the broker, and what they make of it.

Devices report on retained `devices/<id>/status` and live `devices/<id>/events`; the publisher
leaves retained `blobs/<sha256>/meta` and `models/<channel>/manifest` (docs/protocol.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.bounded_json import parse_object
from agent.updates.protocol import SHA256, Limits, ProtocolError, Release, Topics, parse_release
from converter.broker_client import Connection

logger = logging.getLogger(__name__)

MAX_STATUS_BYTES = 64 * 1024
MAX_EVENT_BYTES = 64 * 1024


def _json_object(raw: bytes, limit: int, what: str) -> dict[str, Any] | None:
    try:
        return parse_object(raw, limit, what)
    except ValueError:
        return None


def _level(topic: str, from_end: int) -> str:
    return topic.split("/")[-from_end]


def read_statuses(conn: Connection, topics: Topics) -> dict[str, dict[str, Any]]:
    """Each device's retained status, by device id (from the topic, not the message)."""
    out: dict[str, dict[str, Any]] = {}
    for topic, raw in conn.read_retained(topics.devices("status")).items():
        status = _json_object(raw, MAX_STATUS_BYTES, "status")
        if status is None:
            logger.warning("ignored a status that is not a JSON object on %s", topic)
            continue
        out[_level(topic, 2)] = status
    return out


def read_releases(conn: Connection, topics: Topics) -> dict[str, Release]:
    """Each channel's current release; a retained message that is not a release is skipped."""
    out: dict[str, Release] = {}
    for topic, raw in conn.read_retained(topics.releases()).items():
        try:
            out[_level(topic, 2)] = parse_release(raw, Limits())
        except ProtocolError as exc:
            logger.warning("ignored %s: %s", topic, exc)
    return out


def read_stage_releases(conn: Connection, topics: Topics) -> dict[str, Release]:
    """Each channel's releases of stages other than stable, by "<channel>/<stage>"."""
    out: dict[str, Release] = {}
    for topic, raw in conn.read_retained(topics.stage_releases()).items():
        try:
            out[f"{_level(topic, 3)}/{_level(topic, 2)}"] = parse_release(raw, Limits())
        except ProtocolError as exc:
            logger.warning("ignored %s: %s", topic, exc)
    return out


@dataclass(frozen=True)
class BlobMeta:
    sha256: str
    size: int
    chunks: int
    channel: str


def read_blob_metas(conn: Connection, topics: Topics) -> list[BlobMeta]:
    out = []
    for topic, raw in conn.read_retained(topics.blob_metas()).items():
        meta = _json_object(raw, MAX_STATUS_BYTES, "blob meta") or {}
        sha, chunks = meta.get("sha256"), meta.get("chunks")
        if (
            sha != _level(topic, 2)
            or not isinstance(chunks, int)
            or not 0 < chunks <= Limits().max_chunks
        ):
            logger.warning("ignored a malformed blob meta on %s", topic)
            continue
        out.append(BlobMeta(sha, int(meta.get("size", 0)), chunks, str(meta.get("channel", ""))))
    return sorted(out, key=lambda b: (b.channel, b.sha256))


@dataclass
class EventLog:
    """Events seen on devices/+/events, in arrival order (bounded)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    limit: int = 10_000
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, topic: str, raw: bytes) -> dict[str, Any] | None:
        event = _json_object(raw, MAX_EVENT_BYTES, "event")
        if event is None:
            return None
        event.setdefault("device_id", _level(topic, 2))
        with self.lock:
            if len(self.events) < self.limit:
                self.events.append(event)
        return event

    def last_by_device(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {str(e["device_id"]): e for e in self.events}


def watch_events(
    conn: Connection,
    topics: Topics,
    log: EventLog,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    def handle(topic: str, raw: bytes) -> None:
        event = log.add(topic, raw)
        if event is not None and on_event is not None:
            on_event(event)

    conn.stream(topics.devices("events"), handle)


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    state: str
    model: str
    version: int | None
    channel: str
    health: str
    fps: float | None
    p50_ms: float | None
    p99_ms: float | None
    last_event: str

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _event_text(event: dict[str, Any] | None) -> str:
    if not event:
        return ""
    text = str(event.get("event", "?"))
    if event.get("version") is not None:
        text += f" v{event['version']}"
    if event.get("reason"):
        text += f": {event['reason']}"
    return text


def device_rows(
    statuses: dict[str, dict[str, Any]],
    releases: dict[str, Release],
    events: dict[str, dict[str, Any]],
) -> list[DeviceRow]:
    """One row per device; its channel is the one whose current release it serves, if any."""
    channel_of = {r.blob.sha256: name for name, r in releases.items()}
    rows = []
    for device_id in sorted(set(statuses) | set(events)):
        s = statuses.get(device_id, {})
        model: dict[str, Any] = s["model"] if isinstance(s.get("model"), dict) else {}
        latency: dict[str, Any] = s["latency_ms"] if isinstance(s.get("latency_ms"), dict) else {}
        sha = str(model.get("sha256", ""))
        rows.append(
            DeviceRow(
                device_id=device_id,
                state=str(s.get("state", "unknown")),
                model=str(model.get("name", "")),
                version=model.get("version"),
                channel=str(s.get("channel") or channel_of.get(sha, "")),
                health=str(s.get("health") or ""),
                fps=s.get("fps"),
                p50_ms=latency.get("p50"),
                p99_ms=latency.get("p99"),
                last_event=_event_text(events.get(device_id) or s.get("last_event")),
            )
        )
    return rows


def shas_in(obj: Any) -> set[str]:
    """Every sha256 named anywhere in a status (active model, previous model, ...)."""
    if isinstance(obj, dict):
        found = {
            v for k, v in obj.items() if k == "sha256" and isinstance(v, str) and SHA256.match(v)
        }
        for v in obj.values():
            found |= shas_in(v)
        return found
    if isinstance(obj, list):
        return set().union(*(shas_in(v) for v in obj)) if obj else set()
    return set()


@dataclass(frozen=True)
class GcPlan:
    clear: list[BlobMeta]
    keep: list[tuple[BlobMeta, str]]  # and why


def plan_gc(
    metas: list[BlobMeta],
    releases: dict[str, Release],
    statuses: dict[str, dict[str, Any]],
    channel: str,
) -> GcPlan:
    """The channel's blobs that no current release and no device's status uses."""
    released = {r.blob.sha256: name for name, r in releases.items()}
    used_by: dict[str, str] = {}
    for device_id, status in statuses.items():
        for sha in shas_in(status):
            used_by.setdefault(sha, device_id)
    clear, keep = [], []
    for meta in metas:
        if meta.channel != channel:
            continue
        if meta.sha256 in released:
            keep.append((meta, f"current release of {released[meta.sha256]}"))
        elif meta.sha256 in used_by:
            keep.append((meta, f"used by device {used_by[meta.sha256]}"))
        else:
            clear.append(meta)
    return GcPlan(clear, keep)


def clear_messages(topics: Topics, meta: BlobMeta) -> list[tuple[str, bytes]]:
    """Empty retained payloads on every chunk, then on the meta (so a cut-off gc is redone)."""
    out = [(topics.chunk(meta.sha256, i), b"") for i in range(meta.chunks)]
    out.append((topics.blob_meta(meta.sha256), b""))
    return out
