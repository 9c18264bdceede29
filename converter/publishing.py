"""Publishing a bundle to a channel (docs/protocol.md): the release announced, then the chunks and
blob meta, then the release retained.

Every message is sent at QoS 1 and counts as sent when the broker has acknowledged it (PUBACK).
Chunks go out through a bounded window of unacknowledged messages, so memory stays bounded and a
slow broker slows the publisher instead of piling up in it. The announce (not retained) lets the
devices online pull while the chunks are being sent; the retained release goes out last, so a
device that comes later never finds a release whose chunks are not on the broker yet.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as paho

from agent.bundle.loading import check_model_digest, read_manifest, sized_model_file
from agent.bundle.manifest import Manifest
from agent.bundle.signing import load_public_key, verify_manifest
from agent.errors import EdgegapError
from agent.updates.protocol import (
    NAME,
    STABLE,
    Limits,
    ProtocolError,
    Release,
    Topics,
    cut,
    parse_release,
)
from converter.broker_client import WINDOW, BrokerError, Connection

logger = logging.getLogger(__name__)


ACK_TIMEOUT_S = 30.0


class PublishError(EdgegapError, ValueError):
    """A bundle that may not be published to this channel, with the reason."""


@dataclass(frozen=True)
class Prepared:
    """A bundle read, checked and cut, ready to send."""

    release: Release
    chunks: list[bytes]

    @property
    def manifest(self) -> Manifest:
        return self.release.manifest


@dataclass(frozen=True)
class Published:
    release: Release
    previous: int | None  # the channel's version before, None when it was empty
    seconds: float  # chunks, meta and release, from first send to last PUBACK


def check_channel(channel: str) -> str:
    if not NAME.match(channel):
        raise PublishError(
            f"channel {channel!r} must be 1-64 letters, digits, '.', '_' or '-' (one topic level)"
        )
    return channel


def prepare(
    bundle: Path,
    channel: str,
    chunk_size: int,
    allow_unsigned: bool = False,
    keys: tuple[Path, ...] = (),
) -> Prepared:
    """Read the bundle, check it (files, sha256, signature) and cut its model into chunks."""
    check_channel(channel)
    manifest = read_manifest(bundle)
    model = sized_model_file(bundle, manifest)
    blob, chunks = cut(model.read_bytes(), chunk_size)  # hashes the model, once
    check_model_digest(model, blob.sha256, manifest)
    if manifest.signature is None and not allow_unsigned:
        raise PublishError(
            f"{bundle} is not signed; sign it (edgegap convert --sign-key) or pass --allow-unsigned"
        )
    if keys:
        verify_manifest(manifest, [load_public_key(k) for k in keys])
    published = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    release = Release(channel=channel, manifest=manifest, blob=blob, published=published)
    try:  # the device's own parser and limits, before anything is sent
        parse_release(release.to_bytes(), Limits())
    except ProtocolError as exc:
        raise PublishError(f"a device would refuse this release: {exc}") from exc
    return Prepared(release, chunks)


def current_release(
    conn: Connection, topics: Topics, channel: str, stage: str = STABLE
) -> Release | None:
    """The retained release of the channel's stage; None when that stage is empty."""
    topic = topics.release(channel, stage)
    raw = conn.read_retained(topic).get(topic)
    if raw is None:
        return None
    try:
        return parse_release(raw, Limits())
    except ProtocolError as exc:
        logger.warning("the retained message on %s is not a release: %s", topic, exc)
        return None


def check_version(new: Manifest, current: Release | None) -> None:
    if current is not None and new.version <= current.manifest.version:
        raise PublishError(
            f"channel {current.channel} is at version {current.manifest.version}; "
            f"version {new.version} is not above it"
        )


def _send(
    conn: Connection,
    topic: str,
    payload: bytes,
    window: deque[paho.MQTTMessageInfo],
    retain: bool = True,
) -> None:
    info = conn.client.publish(topic, payload, qos=1, retain=retain)
    if info.rc != paho.MQTT_ERR_SUCCESS:
        raise BrokerError(f"publishing to {topic} failed: {paho.error_string(info.rc)}")
    window.append(info)


def _acked(info: paho.MQTTMessageInfo, where: str) -> None:
    try:
        info.wait_for_publish(ACK_TIMEOUT_S)
    except (RuntimeError, ValueError) as exc:
        raise BrokerError(f"broker {where} lost the connection while publishing: {exc}") from exc
    if not info.is_published():
        raise BrokerError(f"broker {where} did not acknowledge a message in {ACK_TIMEOUT_S:g} s")


def send_all(
    conn: Connection,
    messages: list[tuple[str, bytes]],
    on_acked: Callable[[int], None] = lambda n: None,
    retain: bool = True,
) -> None:
    """Publish QoS 1 messages (retained unless told) in order, at most WINDOW unacknowledged at a
    time; call on_acked with each message's payload size once the broker has acknowledged it."""
    window: deque[paho.MQTTMessageInfo] = deque()
    sizes: deque[int] = deque()
    for topic, payload in messages:
        if len(window) >= WINDOW:
            _acked(window.popleft(), conn.where)
            on_acked(sizes.popleft())
        _send(conn, topic, payload, window, retain)
        sizes.append(len(payload))
    while window:
        _acked(window.popleft(), conn.where)
        on_acked(sizes.popleft())


def blob_meta(release: Release) -> bytes:
    b = release.blob
    return json.dumps(
        {"sha256": b.sha256, "size": b.size, "chunks": b.chunks, "channel": release.channel}
    ).encode()


def publish(
    conn: Connection,
    topics: Topics,
    prepared: Prepared,
    on_acked: Callable[[int], None] = lambda n: None,
    stage: str = STABLE,
) -> Published:
    """Announce the release, send the chunks and the blob meta, then the release retained, after
    checking the channel's version.
    A stage other than stable gets its own release topic; the version must be above that
    stage's and the stable one's (converter/rollout/ checks the rollout's own record too)."""
    release = prepared.release
    current = current_release(conn, topics, release.channel, stage)
    check_version(release.manifest, current)
    if stage != STABLE:
        check_version(release.manifest, current_release(conn, topics, release.channel))
    sha = release.blob.sha256
    messages = [(topics.chunk(sha, i), c) for i, c in enumerate(prepared.chunks)]
    messages.append((topics.blob_meta(sha), blob_meta(release)))
    start = time.perf_counter()
    payload = release.to_bytes()
    send_all(conn, [(topics.announce(release.channel, stage), payload)], retain=False)
    send_all(conn, messages, on_acked)
    send_all(conn, [(topics.release(release.channel, stage), payload)])
    seconds = time.perf_counter() - start
    _read_back(conn, topics, prepared, stage)
    return Published(release, current.manifest.version if current else None, seconds)


def _read_back(conn: Connection, topics: Topics, prepared: Prepared, stage: str = STABLE) -> None:
    """A broker that acknowledges but drops messages (an ACL denial under MQTT 3.1.1) is found
    here: the release and the last chunk must be retained as sent."""
    release = prepared.release
    last = release.blob.chunks - 1
    for topic, want in (
        (topics.chunk(release.blob.sha256, last), prepared.chunks[last]),
        (topics.release(release.channel, stage), release.to_bytes()),
    ):
        if conn.read_retained(topic).get(topic) != want:
            raise PublishError(
                f"the broker acknowledged {topic} but does not hold it; "
                "may this user write models/# and blobs/# (the broker's ACL)?"
            )
