"""The rollout controller: watches the canary group on a new version, then promotes the version
to stable by itself, or halts the rollout and rolls the canaries back (docs/protocol.md).

A version is promoted when every counted canary device (online when the rollout started, or
joining since) has passed probation on it and its statistics stayed within the bounds for the
window. It is halted when a canary rolls back or refuses it, leaves it, or leaves the bounds,
or when it is not promoted within max_wait_s. Halting clears the canary release first (so
nothing offers the version again), then sends `rollback` to each canary still serving it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.errors import EdgegapError
from agent.updates.protocol import Release, Topics
from converter.broker_client import Connection
from converter.publishing import PublishError, send_all
from converter.rollout.bounds import (
    Baseline,
    Bounds,
    Sample,
    group_baseline,
    judge,
    scores_ready,
)
from converter.rollout.feed import Feed, Seen
from converter.rollout.record import DeviceRecord, DeviceState, RolloutRecord, RolloutState

logger = logging.getLogger(__name__)

POLL_S = 0.2
RESEND_S = 10.0  # a canary still on the halted version this long after a rollback gets another
# (the rollback names the version, so a device that already left it refuses a repeat)


class RolloutError(EdgegapError, ValueError):
    """A rollout that cannot start or go on, with the reason."""


class Controller:
    """Drives one channel's rollout record to promoted or halted."""

    def __init__(
        self,
        conn: Connection,
        topics: Topics,
        channel: str,
        bounds: Bounds | None = None,
        max_wait_s: float = 600.0,
        on_change: Callable[[RolloutRecord], None] | None = None,
    ) -> None:
        self.conn = conn
        self.topics = topics
        self.channel = channel
        self.bounds = bounds or Bounds()
        self.max_wait_s = max_wait_s
        self.on_change = on_change
        self.feed = Feed(topics, channel)
        self.record: RolloutRecord | None = None
        self.release: Release | None = None  # the canary release being rolled out
        self._since = 0.0  # when run() began: max_wait_s counts from there
        self._written = b""
        self._unknown: dict[str, list[str]] = {}  # per device: bounds its last sample left open
        self._judged_at: dict[str, float] = {}  # per device: arrival of its last judged sample
        self._commanded: dict[str, float] = {}  # per device: when it was last sent rollback

    def open(self) -> Controller:
        """Start reading statuses, events and releases (before anything is published)."""
        self.feed.open(self.conn)
        return self

    # ---- the record ---------------------------------------------------------------------
    def write(self, record: RolloutRecord) -> None:
        """Publish the record (retained) if it changed since last written, unless a newer
        rollout of the channel has replaced it."""
        self.record = record
        self.feed.mine = record.sha256
        if self.feed.replaced:  # the record on the broker is a newer rollout's: leave it
            self._replaced(record)
            return
        body = record.model_dump_json(exclude={"updated"}).encode()
        if body == self._written:
            return
        self._written = body
        send_all(self.conn, [(self.topics.rollout(self.channel), record.to_bytes())])
        if self.on_change is not None:
            self.on_change(record)

    def rewrite(self, record: RolloutRecord) -> None:
        """Publish the record again, changed or not."""
        self._written = b""
        self.write(record)

    def baseline(self, sample: Sample | None, sha256: str) -> Baseline | None:
        """A canary's own statistics before the rollout, else the stable group's."""
        if sample is not None and sample.sha256 != sha256 and sample.fps:
            return sample.baseline()
        stable = self.feed.stable
        return group_baseline(self.feed.stable_samples(stable.blob.sha256)) if stable else None

    # ---- the loop -----------------------------------------------------------------------
    def run(
        self, record: RolloutRecord, release: Release | None, resumed: bool = False
    ) -> RolloutRecord:
        """Watch until the rollout is promoted or halted; returns the final record. release:
        the canary release of the record's version (None: it is gone, and the rollout halts)."""
        self.release, self._since = release, time.time()
        record.bounds = self.bounds.as_json()
        if release is None or release.blob.sha256 != record.sha256:
            self.halt(record, f"the canary release no longer offers v{record.version}")
        self.write(record)
        if resumed and not record.finished:
            self._nudge(record)
        while not record.finished:
            self.step(record, time.time())
            self.write(record)
            if not record.finished:
                time.sleep(POLL_S)
        if record.state is RolloutState.HALTED:
            self.settle_rollback(record)
        return record

    def _replaced(self, record: RolloutRecord) -> bool:
        """A newer `publish --stage canary` wrote its own record: this rollout is over, and
        must not touch the canary release or the devices any more."""
        if not self.feed.replaced or record.finished:
            return False
        record.state = RolloutState.SUPERSEDED
        record.reason = "a newer rollout of the channel started"
        return True

    def step(self, record: RolloutRecord, now: float) -> None:
        if self._replaced(record):
            return
        for event, arrived in self.feed.take_events():
            self._on_event(record, event, arrived)
            if record.finished:
                return
        if self._superseded(record):
            return
        for device, sample in self.feed.canaries().items():
            if device not in record.devices:  # joined since: compared with the stable group
                record.devices[device] = DeviceRecord(baseline=self.baseline(sample, record.sha256))
        for device, dev in record.devices.items():
            self._track(record, device, dev, now)
            if record.finished:
                return
        counted = list(record.devices.values())
        if len(counted) >= self.bounds.min_canaries and all(
            d.state is DeviceState.IN_BOUNDS for d in counted
        ):
            self.promote(record)
        elif now - max(record.started, self._since) >= self.max_wait_s:
            pending = "; ".join(
                f"{d}: {r.reason}"
                for d, r in record.devices.items()
                if r.state is not DeviceState.IN_BOUNDS
            )
            self.halt(
                record, f"not promoted within {self.max_wait_s:g} s ({pending or 'no canary'})"
            )

    def _on_event(self, record: RolloutRecord, event: dict[str, Any], arrived: float) -> None:
        dev = record.devices.get(str(event.get("device_id")))
        if dev is None or event.get("sha256") != record.sha256:
            return
        kind = event.get("event")
        if kind == "probation_passed":
            dev.seen = True
            dev.passed_at = dev.passed_at or arrived
        elif kind in ("rolled_back", "rejected"):
            dev.state = DeviceState.ROLLED_BACK
            dev.reason = f"{kind.replace('_', ' ')}: {event.get('reason', '')}"[:300]
            self.halt(record, f"{event['device_id']} {dev.reason}")

    def _superseded(self, record: RolloutRecord) -> bool:
        stable = self.feed.stable
        if stable is None or stable.manifest.version < record.version:
            return False
        if stable.blob.sha256 == record.sha256:
            record.state, record.stage = RolloutState.PROMOTED, "stable"
            record.reason = "already the stable release"
        else:
            record.state = RolloutState.SUPERSEDED
            record.reason = f"stable got version {stable.manifest.version} meanwhile"
        return True

    def _track(self, record: RolloutRecord, device: str, dev: DeviceRecord, now: float) -> None:
        seen = self.feed.latest(device)
        fresh = self.feed.take_samples(device)
        if seen is None:
            dev.state, dev.reason = DeviceState.WAITING, "no status yet"
            return
        s = seen.sample
        dev.version = s.version
        if not s.online:
            dev.state, dev.reason = DeviceState.OFFLINE, "offline: promotion waits for it"
            return
        if s.sha256 != record.sha256:
            if dev.seen:
                dev.state, dev.reason = (
                    DeviceState.ROLLED_BACK,
                    f"left v{record.version}: serves v{s.version}",
                )
                self.halt(record, f"{device} {dev.reason}")
            else:
                dev.state, dev.reason = (
                    DeviceState.WAITING,
                    f"serves v{s.version}; v{record.version} not active yet",
                )
            return
        dev.seen = True
        if dev.passed_at is None and s.good:
            dev.passed_at = seen.arrived
        if dev.passed_at is None:
            dev.state, dev.reason = DeviceState.WAITING, "in probation"
            return
        self._judge(record, device, dev, fresh)
        if not record.finished:
            self._window(device, dev, now)

    def _judge(
        self, record: RolloutRecord, device: str, dev: DeviceRecord, fresh: list[Seen]
    ) -> None:
        assert dev.passed_at is not None
        for seen in fresh:
            s = seen.sample
            if seen.arrived < dev.passed_at or s.sha256 != record.sha256 or not s.online:
                continue
            ready = scores_ready(s, record.version, seen.arrived - dev.passed_at)
            verdict = judge(s, dev.baseline, self.bounds, ready)
            if verdict.problems:
                dev.state, dev.reason = DeviceState.OUT_OF_BOUNDS, "; ".join(verdict.problems)
                self.halt(record, f"{device} out of bounds on v{record.version}: {dev.reason}")
                return
            self._unknown[device] = verdict.unknown
            self._judged_at[device] = seen.arrived

    def _window(self, device: str, dev: DeviceRecord, now: float) -> None:
        """In bounds once the window has passed and a status from its end was fully judged."""
        assert dev.passed_at is not None
        held = now - dev.passed_at
        window = self.bounds.window_s
        unknown = self._unknown.get(device, [])
        if held < window:
            dev.state = DeviceState.WATCHING
            dev.reason = f"in bounds for {held:.0f} of {window:g} s"
        elif self._judged_at.get(device, 0.0) < dev.passed_at + window:
            dev.state, dev.reason = DeviceState.WATCHING, "waiting for a status after the window"
        elif unknown:
            dev.state, dev.reason = DeviceState.WATCHING, "; ".join(unknown)
        else:
            dev.state, dev.reason = (
                DeviceState.IN_BOUNDS,
                f"passed probation, in bounds for {held:.0f} s",
            )

    # ---- outcomes -----------------------------------------------------------------------
    def promote(self, record: RolloutRecord) -> None:
        """Offer the canary release to the stable group: the same signed release, retained."""
        canary = self.release
        assert canary is not None and canary.blob.sha256 == record.sha256
        topic = self.topics.release(self.channel)
        payload = canary.to_bytes()
        send_all(self.conn, [(topic, payload)])
        if self.conn.read_retained(topic).get(topic) != payload:
            raise PublishError(f"the broker acknowledged {topic} but does not hold it (ACL?)")
        n = len(record.devices)
        record.state, record.stage = RolloutState.PROMOTED, "stable"
        record.reason = (
            f"{n} canar{'y' if n == 1 else 'ies'} passed probation and stayed in bounds for "
            f"{self.bounds.window_s:g} s"
            + ("" if self.bounds.scores == "require" else " (score bounds skipped)")
        )
        logger.info("promoted %s v%d to stable", record.name, record.version)

    def halt(self, record: RolloutRecord, reason: str) -> None:
        """Stop the rollout at canary: clear the canary release, roll the canaries back."""
        record.state, record.reason = RolloutState.HALTED, reason
        logger.warning("rollout of %s v%d halted: %s", record.name, record.version, reason)
        send_all(self.conn, [(self.topics.release(self.channel, "canary"), b"")])
        self._roll_back_canaries(record, time.time())

    def _roll_back_canaries(self, record: RolloutRecord, now: float) -> list[str]:
        """Send rollback to each online counted canary still serving the version; returns them."""
        still = []
        for device in record.devices:
            seen = self.feed.latest(device)
            if seen is None or seen.sample.sha256 != record.sha256 or not seen.sample.online:
                continue
            still.append(device)
            last = self._commanded.get(device)
            if last is None or seen.arrived > last + RESEND_S:
                self._command(device, {"cmd": "rollback", "sha256": record.sha256})
                self._commanded[device] = now
        return still

    def _command(self, device: str, cmd: dict[str, Any]) -> None:
        info = self.conn.client.publish(
            self.topics.device(device, "cmd"), json.dumps(cmd).encode(), qos=1
        )
        info.wait_for_publish(self.conn.options.timeout_s)
        logger.info("sent %s to %s", cmd["cmd"], device)

    def settle_rollback(self, record: RolloutRecord, wait_s: float = 30.0) -> list[str]:
        """Wait until no canary serves the halted version (sending rollback again to one that
        still does); returns the devices that still do, named in the record's reason."""
        deadline = time.monotonic() + wait_s
        still = self._roll_back_canaries(record, time.time())
        while still and time.monotonic() < deadline:
            time.sleep(POLL_S)
            still = self._roll_back_canaries(record, time.time())
        for device, dev in record.devices.items():
            seen = self.feed.latest(device)
            if seen is not None:
                dev.version = seen.sample.version
            if device in self._commanded and device not in still:
                dev.state, dev.reason = DeviceState.ROLLED_BACK, "rolled back by the controller"
        offline = [
            d
            for d in record.devices
            if (seen := self.feed.latest(d)) is not None
            and not seen.sample.online
            and seen.sample.sha256 == record.sha256
        ]
        if still or offline:
            record.reason += f"; still on v{record.version}: {', '.join(still + offline)}"
            record.reason += " (offline ones get rollback from `edgegap rollout watch` when back)"
        self.write(record)
        return still

    def _nudge(self, record: RolloutRecord) -> None:
        """A resumed watch may have missed the events of a canary that already refused the
        version: `reload` makes each canary not on it read the releases again (and say so)."""
        for device in record.devices:
            seen = self.feed.latest(device)
            if seen is not None and seen.sample.online and seen.sample.sha256 != record.sha256:
                self._command(device, {"cmd": "reload"})
