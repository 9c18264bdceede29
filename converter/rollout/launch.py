"""Starting and watching a rollout: the library API behind `edgegap publish --stage canary`
and `edgegap rollout watch`, for anything else that ships models (a refresh loop) too.

    with Connection(options, "refresh") as conn:
        record = roll_out(conn, topics, prepare(bundle, channel, chunk_size), Bounds(window_s=120))
    record.state  # RolloutState.PROMOTED or HALTED (or SUPERSEDED); record.reason says why
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.updates.protocol import Topics
from converter.broker_client import Connection
from converter.publishing import Prepared, PublishError, current_release, publish
from converter.rollout.bounds import Bounds
from converter.rollout.controller import Controller, RolloutError
from converter.rollout.record import DeviceRecord, RolloutRecord, RolloutState, read_record

logger = logging.getLogger(__name__)

CANARY = "canary"
RECLAIM_S = 1.0


def start_rollout(
    controller: Controller,
    prepared: Prepared,
    on_acked: Callable[[int], None] = lambda n: None,
) -> RolloutRecord:
    """Publish the bundle to the canary stage and write the rollout record with each online
    canary's statistics as its baseline. The controller must be open (reading statuses).
    Raises RolloutError when no canary is online, PublishError for a version not above the
    channel's stable and canary releases and its last rollout."""
    conn, topics = controller.conn, controller.topics
    release = prepared.release
    channel, m = release.channel, release.manifest
    last = read_record(conn, topics, channel)
    if last is not None and m.version <= last.version:
        raise PublishError(
            f"channel {channel}'s last rollout was version {last.version} ({last.state.value}); "
            f"version {m.version} is not above it"
        )
    canaries = controller.feed.canaries()
    if not canaries:
        raise RolloutError(
            f"no canary device of channel {channel} is online under {topics.prefix} "
            "(updates.group: canary); publish to stable instead, or start one"
        )
    published = publish(conn, topics, prepared, on_acked, stage=CANARY)
    now = round(time.time(), 3)
    record = RolloutRecord(
        channel=channel,
        name=m.name,
        version=m.version,
        sha256=release.blob.sha256,
        stage=CANARY,
        state=RolloutState.CANARY,
        reason=f"offered to {len(canaries)} canary device(s)",
        previous=controller.feed.stable.manifest.version if controller.feed.stable else None,
        started=now,
        updated=now,
        devices={
            d: DeviceRecord(
                version=s.version,
                reason=f"serves v{s.version}; v{m.version} offered",
                baseline=controller.baseline(s, release.blob.sha256),
            )
            for d, s in sorted(canaries.items())
        },
    )
    logger.info("published %s v%d to %s (was v%s)", m.name, m.version, CANARY, published.previous)
    controller.write(record)
    _claim_record(controller, record)
    return record


def _claim_record(controller: Controller, record: RolloutRecord) -> None:
    """A watcher of the rollout before may have written its record just after ours; it stops
    writing once ours reaches it, so ours is written again if it was overwritten."""
    time.sleep(RECLAIM_S)
    held = read_record(controller.conn, controller.topics, record.channel)
    if held is None or held.sha256 != record.sha256:
        controller.rewrite(record)


def roll_out(
    conn: Connection,
    topics: Topics,
    prepared: Prepared,
    bounds: Bounds | None = None,
    max_wait_s: float = 600.0,
    on_acked: Callable[[int], None] = lambda n: None,
    on_change: Callable[[RolloutRecord], None] | None = None,
) -> RolloutRecord:
    """Publish to the canary stage, watch, and promote to stable or halt; blocks until one of
    them (at most max_wait_s, then it halts). Returns the final record."""
    channel = prepared.release.channel
    controller = Controller(conn, topics, channel, bounds, max_wait_s, on_change).open()
    record = start_rollout(controller, prepared, on_acked)
    return controller.run(record, prepared.release)


def watch_rollout(
    conn: Connection,
    topics: Topics,
    channel: str,
    bounds: Bounds | None = None,
    max_wait_s: float = 600.0,
    on_change: Callable[[RolloutRecord], None] | None = None,
) -> RolloutRecord:
    """Resume the channel's rollout from its record and drive it to promoted or halted. A
    halted one is enforced again: canaries back online on the halted version are rolled back."""
    controller = Controller(conn, topics, channel, bounds, max_wait_s, on_change).open()
    record = read_record(conn, topics, channel)
    if record is None:
        raise RolloutError(
            f"channel {channel} has no rollout under {topics.prefix}: "
            "start one with `edgegap publish --stage canary`"
        )
    if record.state is RolloutState.HALTED:
        controller.record = record
        controller.settle_rollback(record)
        return record
    if record.finished:
        return record
    release = current_release(conn, topics, channel, CANARY)
    return controller.run(record, release, resumed=True)
