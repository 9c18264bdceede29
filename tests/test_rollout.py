"""Staged rollout against a real mosquitto with real agents: a version published to the canary
stage reaches the canary group only, and the controller promotes it to stable or halts it and
rolls the canaries back (docs/protocol.md, "Staged rollout")."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import Broker
from updates_kit import (
    CHANNEL,
    CHUNK,
    PREFIX,
    TOPICS,
    Mqtt,
    agent_config,
    failing_bundle,
    running_agent,
    served_version,
    variant,
    wait_until,
)

from agent.app import Agent
from agent.store import BundleStore
from converter.broker_client import BrokerOptions, Connection
from converter.publishing import prepare, publish
from converter.rollout import Bounds, RolloutRecord, RolloutState, read_record, roll_out

CANARY, STABLE_DEVICE = "cam-canary", "cam-stable"
# lenient rate bounds: the versions are different models, and the machine is shared
LENIENT = Bounds(window_s=1.0, min_fps_ratio=0.05, max_latency_ratio=50, max_p99_ratio=100,
                 scores="skip")  # fmt: skip


@contextlib.contextmanager
def two_agents(broker: Broker, tmp: Path) -> Iterator[tuple[Agent, Agent, Mqtt]]:
    """A canary and a stable agent on CHANNEL, both through probation on v1."""
    kit = Mqtt(broker, f"{PREFIX}/devices/+/#")
    keys = {}
    for device, group in ((CANARY, "canary"), (STABLE_DEVICE, "stable")):
        keys[device] = agent_config(
            broker, tmp, **{
                "device_id": device, "updates.group": group,
                "updates.state_dir": str(tmp / f"state-{device}"),
                "outputs.jsonl": str(tmp / f"{device}.jsonl"), "mqtt.status_interval_s": 0.3,
            },
        )  # fmt: skip
    with running_agent(keys[CANARY]) as canary, running_agent(keys[STABLE_DEVICE]) as stable:
        for device in (CANARY, STABLE_DEVICE):
            kit.wait_event("probation_passed", version=1, device_id=device)
        wait_until(lambda: CANARY in statuses_with_group(kit), what="canary status")
        yield canary, stable, kit
    kit.close()


def statuses_with_group(kit: Mqtt) -> set[str]:
    return {e.get("device_id", "") for e in _statuses(kit) if e.get("group") == "canary"}


def _statuses(kit: Mqtt) -> list[dict[str, Any]]:
    import json

    with kit._lock:
        return [json.loads(p) for t, p in kit.messages if t.endswith("/status") and p]


def connection(broker: Broker) -> Connection:
    return Connection(BrokerOptions(url=broker.url), "test-rollout")


def events_of(kit: Mqtt, device: str, version: int) -> list[dict[str, Any]]:
    return [e for e in kit.events() if e["device_id"] == device and e.get("version") == version]


def test_a_good_version_reaches_the_canary_first_then_is_promoted_to_stable(
    mosquitto: Broker, tmp_path: Path
) -> None:
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2").path
    changes: list[tuple[float, RolloutRecord]] = []
    with two_agents(mosquitto, tmp_path) as (canary, stable, kit), connection(mosquitto) as conn:
        prepared = prepare(v2, CHANNEL, CHUNK, allow_unsigned=True)
        record = roll_out(
            conn, TOPICS, prepared, LENIENT, max_wait_s=60,
            on_change=lambda r: changes.append((time.time(), r.model_copy(deep=True))),
        )  # fmt: skip
        assert record.state is RolloutState.PROMOTED, record.reason
        assert "1 canary passed probation and stayed in bounds" in record.reason
        kit.wait_event("probation_passed", version=2, device_id=STABLE_DEVICE)
        assert served_version(canary) == served_version(stable) == 2
        retained = read_record(conn, TOPICS, CHANNEL)
        assert retained is not None and retained.state is RolloutState.PROMOTED
        # v3 straight to stable: the canary takes it too, and then ignores the canary stage's
        # older v2 when it reads both releases again (no rejected event)
        v3 = variant("ssd_raw", 3, tmp_path / "v3").path
        publish(conn, TOPICS, prepare(v3, CHANNEL, CHUNK, allow_unsigned=True))
        kit.wait_event("probation_passed", version=3, device_id=CANARY)
        kit.put(TOPICS.device(CANARY, "cmd"), b'{"cmd": "reload"}', retain=False)
        kit.wait_event("command", cmd="reload", device_id=CANARY)
        time.sleep(0.5)
        assert served_version(canary) == 3
    assert [e for e in kit.events() if e["event"] == "rejected"] == []
    # the canary went through the whole update, and was watched in bounds, before the stable
    # device heard of v2: that was after the last record of the canary stage was written
    last_canary_write = max(t for t, r in changes if r.state is RolloutState.CANARY)
    canary_passed = kit.wait_event("probation_passed", version=2, device_id=CANARY)["ts"]
    stable_heard = events_of(kit, STABLE_DEVICE, 2)[0]
    assert stable_heard["event"] == "available" and stable_heard["ts"] >= last_canary_write
    assert canary_passed < last_canary_write
    states = [r.devices[CANARY].state.value for _, r in changes]
    assert "watching" in states and states[-1] == "in_bounds"


def test_a_version_that_fails_probation_on_the_canary_halts_and_never_reaches_stable(
    mosquitto: Broker, tmp_path: Path
) -> None:
    bad = failing_bundle(2, tmp_path / "v2").path
    v3 = variant("ssd_postprocess", 3, tmp_path / "v3").path
    with two_agents(mosquitto, tmp_path) as (canary, stable, kit), connection(mosquitto) as conn:
        record = roll_out(
            conn, TOPICS, prepare(bad, CHANNEL, CHUNK, allow_unsigned=True), LENIENT, 60
        )
        assert record.state is RolloutState.HALTED
        assert record.reason.startswith(f"{CANARY} rolled back: invoke error"), record.reason
        assert record.devices[CANARY].state.value == "rolled_back"
        assert served_version(canary) == 1 and served_version(stable) == 1
        assert events_of(kit, STABLE_DEVICE, 2) == []
        # nothing offers v2 any more: the canary release is cleared, stable never had it
        retained = conn.read_retained(f"{PREFIX}/models/{CHANNEL}/#")
        assert TOPICS.release(CHANNEL, "canary") not in retained
        assert TOPICS.release(CHANNEL) not in retained
        # a canary also follows stable: a version published straight to stable reaches both
        publish(conn, TOPICS, prepare(v3, CHANNEL, CHUNK, allow_unsigned=True))
        for device in (CANARY, STABLE_DEVICE):
            kit.wait_event("probation_passed", version=3, device_id=device)
    assert events_of(kit, STABLE_DEVICE, 2) == []


def test_a_canary_out_of_bounds_is_rolled_back_by_the_controller(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """v2 passes probation, but the bounds allow no latency at all: the controller halts the
    rollout and sends the canary `rollback`; the canary ends on v1 and does not take v2 again."""
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2").path
    strict = Bounds(window_s=5.0, max_latency_ratio=1e-6, min_fps_ratio=0.01, scores="skip")
    with two_agents(mosquitto, tmp_path) as (canary, stable, kit), connection(mosquitto) as conn:
        record = roll_out(
            conn, TOPICS, prepare(v2, CHANNEL, CHUNK, allow_unsigned=True), strict, 60
        )
        assert record.state is RolloutState.HALTED
        assert f"{CANARY} out of bounds on v2: latency p50" in record.reason, record.reason
        rolled = kit.wait_event("rolled_back", version=2, device_id=CANARY)
        assert rolled["reason"] == "rollback command" and rolled["to"] == 1
        assert record.devices[CANARY].state.value == "rolled_back"
        assert served_version(canary) == 1
        kit.put(TOPICS.device(CANARY, "cmd"), b'{"cmd": "reload"}', retain=False)
        kit.wait_event("command", cmd="reload", device_id=CANARY)
        time.sleep(1.0)
        assert served_version(canary) == 1 and served_version(stable) == 1
        assert [e["event"] for e in events_of(kit, CANARY, 2)].count("available") == 1
        # the rollback named v2: the canary remembers it as rejected, and a repeat is refused
        # (a second plain rollback would have gone back to v2, the model it rolled back from)
        assert BundleStore(tmp_path / f"state-{CANARY}").rejections.holds(record.sha256, 2)
        again = json.dumps({"cmd": "rollback", "sha256": record.sha256}).encode()
        kit.put(TOPICS.device(CANARY, "cmd"), again, retain=False)
        refused = kit.wait_event("command", cmd="rollback", device_id=CANARY, ok=False)
        assert refused["reason"].startswith("not serving") and served_version(canary) == 1
    assert events_of(kit, STABLE_DEVICE, 2) == []


def test_score_bounds_that_cannot_be_evaluated_never_promote(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """Score bounds are required (the default) but cannot be judged: without drift statistics in
    the status, or with fewer frames than --min-frames. Nothing is promoted; the rollout halts
    when --max-wait runs out, saying why, and the canary is rolled back."""
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2").path
    scores = Bounds(window_s=0.5, min_fps_ratio=0.05, max_latency_ratio=50, max_p99_ratio=100,
                    min_frames=10**9)  # fmt: skip
    with two_agents(mosquitto, tmp_path) as (canary, stable, kit), connection(mosquitto) as conn:
        record = roll_out(conn, TOPICS, prepare(v2, CHANNEL, CHUNK, allow_unsigned=True), scores, 6)
        assert record.state is RolloutState.HALTED
        assert "not promoted within 6 s" in record.reason
        has_drift = "drift" in kit.status()
        why = (
            "score statistics do not cover enough frames of the new version yet"
            if has_drift
            else "score bounds not evaluable: the status has no drift statistics"
        )
        assert why in record.reason, record.reason
        kit.wait_event("rolled_back", version=2, device_id=CANARY)
        assert served_version(canary) == 1
    assert events_of(kit, STABLE_DEVICE, 2) == []


def test_a_canary_whose_scores_fall_is_halted_and_rolled_back(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """Once it passed probation on v2, the canary's threshold goes to 1.0: no detection is
    published any more, its drift statistics fall, and the rollout halts on them."""
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2").path
    loose = Bounds(window_s=60, min_fps_ratio=0.05, max_latency_ratio=50, max_p99_ratio=100,
                   max_score_drop=0.05, min_frames=5)  # fmt: skip
    outcome: list[RolloutRecord] = []
    with two_agents(mosquitto, tmp_path) as (canary, stable, kit), connection(mosquitto) as conn:
        if "drift" not in kit.status():
            pytest.skip("the agent publishes no drift statistics in its status")
        first = threading.Thread(
            target=lambda: outcome.append(
                roll_out(conn, TOPICS, prepare(v2, CHANNEL, CHUNK, allow_unsigned=True), loose, 90)
            )
        )
        first.start()
        kit.wait_event("probation_passed", version=2, device_id=CANARY)
        cmd = json.dumps({"cmd": "set_threshold", "value": 1.0}).encode()
        kit.put(TOPICS.device(CANARY, "cmd"), cmd, retain=False)
        first.join(60)
        assert not first.is_alive() and outcome[0].state is RolloutState.HALTED
        reason = outcome[0].reason
        assert f"{CANARY} out of bounds on v2" in reason, reason
        assert any(k in reason for k in ("top_score", "detections per frame")), reason
        kit.wait_event("rolled_back", version=2, device_id=CANARY)
        assert served_version(canary) == 1 and served_version(stable) == 1
    assert events_of(kit, STABLE_DEVICE, 2) == []


def cli(*args: Any) -> Result:
    from converter.cli import cli as edgegap

    return CliRunner().invoke(edgegap, [str(a) for a in args])


def test_the_cli_publishes_to_canary_shows_the_rollout_and_watch_promotes_it(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """`rollout watch` started after the canary took the version (its events long gone) still
    sees it passed probation, from the status's model.good."""
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2").path
    where = ("--broker", mosquitto.url, "--fleet", "test", "--channel", CHANNEL)
    loose = ("--window", 1, "--scores", "skip", "--min-fps-ratio", 0.05,
             "--max-latency-ratio", 50, "--max-p99-ratio", 100, "--max-wait", 60)  # fmt: skip
    with two_agents(mosquitto, tmp_path) as (canary, stable, kit):
        out = cli(
            "publish", v2, *where, "--stage", "canary", "--allow-unsigned", "--chunk-size", CHUNK
        )
        assert out.exit_code == 0, out.output
        assert f"canary/manifest: offered to 1 canary device(s) ({CANARY})" in out.output
        kit.wait_event("probation_passed", version=2, device_id=CANARY)
        time.sleep(1.0)
        assert served_version(stable) == 1
        shown = cli("rollout", "status", *where)
        assert shown.exit_code == 0, shown.output
        assert "rollout of" in shown.output and "canary" in shown.output and CANARY in shown.output
        watched = cli("rollout", "watch", *where, *loose)
        assert watched.exit_code == 0, watched.output
        assert "score bounds skipped" in watched.output and "v2: promoted" in watched.output
        kit.wait_event("probation_passed", version=2, device_id=STABLE_DEVICE)
        as_json = cli("rollout", "status", *where, "--json")
        assert as_json.exit_code == 0, as_json.output
        status = json.loads(as_json.output)
    assert status["rollout"]["state"] == "promoted" and status["rollout"]["stage"] == "stable"
    rows = {(r["stage"], r["device"]): r for r in status["rows"]}
    assert rows[("stable", None)]["version"] == 2 and rows[("canary", None)]["version"] == 2
    assert rows[("canary", CANARY)]["state"] == "in_bounds"
    assert rows[("stable", STABLE_DEVICE)]["version"] == 2


def test_bad_rollout_input_gets_one_line_errors(mosquitto: Broker, tmp_path: Path) -> None:
    where = ("--broker", mosquitto.url, "--fleet", "test")
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2").path
    cases = [
        (("rollout", "watch", *where, "--channel", CHANNEL), "has no rollout under edgegap/test"),
        (("rollout", "status", *where, "--channel", "a/b"), "must be 1-64 letters"),
        (("publish", v2, *where, "--channel", CHANNEL, "--stage", "canary", "--allow-unsigned"),
         "no canary device of channel lobby is online"),
        (("publish", v2, *where, "--channel", CHANNEL, "--stage", "beta"), "'beta' is not one of"),
        (("rollout", "watch", *where, "--channel", CHANNEL, "--window", -1), "--window"),
        (("rollout", "watch", *where, "--channel", CHANNEL, "--scores", "maybe"), "--scores"),
    ]  # fmt: skip
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code != 0, (args, result.output)
        assert message in result.output, (args, result.output)
        if result.exit_code == 1:
            assert len(result.output.strip().splitlines()) == 1, result.output
    retained = _retained(mosquitto, f"{PREFIX}/models/#")
    assert retained == {}, "a refused publish sent nothing"


def _retained(broker: Broker, topic_filter: str) -> dict[str, bytes]:
    with connection(broker) as conn:
        return conn.read_retained(topic_filter)


def test_a_canary_stops_downloading_a_release_that_is_withdrawn(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """A halt clears the canary release; a canary still downloading it stops, and keeps v1."""
    from datetime import datetime, timezone

    from agent.updates.protocol import Release, cut

    kit = Mqtt(mosquitto)
    keys = agent_config(mosquitto, tmp_path, **{"updates.group": "canary"})
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2")
    with running_agent(keys) as agent:
        kit.wait_event("probation_passed", version=1)
        blob, parts = cut(v2.model_bytes(), CHUNK)
        kit.chunks(blob, parts, only=[0])  # the rest never comes
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        release = Release(channel=CHANNEL, manifest=v2.manifest, blob=blob, published=now)
        kit.put(TOPICS.release(CHANNEL, "canary"), release.to_bytes())
        kit.wait_event("downloading", version=2)
        kit.put(TOPICS.release(CHANNEL, "canary"), b"")
        rejected = kit.wait_event("rejected", version=2)
        assert rejected["reason"] == "the release was withdrawn while downloading"
        assert served_version(agent) == 1
        assert kit.status()["group"] == "canary"


def test_a_newer_canary_rollout_supersedes_the_one_being_watched(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """The first watcher stops without touching the canary release or the devices, and the
    record on the broker is the newer rollout's."""
    from converter.rollout import Controller, start_rollout

    v2 = variant("ssd_postprocess", 2, tmp_path / "v2").path
    v3 = variant("ssd_raw", 3, tmp_path / "v3").path
    slow = Bounds(window_s=300, min_fps_ratio=0.05, max_latency_ratio=50, max_p99_ratio=100,
                  scores="skip")  # fmt: skip
    outcome: list[RolloutRecord] = []
    with two_agents(mosquitto, tmp_path) as (canary, stable, kit), connection(mosquitto) as conn:
        first = threading.Thread(
            target=lambda: outcome.append(
                roll_out(conn, TOPICS, prepare(v2, CHANNEL, CHUNK, allow_unsigned=True), slow, 300)
            )
        )
        first.start()
        kit.wait_event("probation_passed", version=2, device_id=CANARY)
        with connection(mosquitto) as other:
            newer = start_rollout(
                Controller(other, TOPICS, CHANNEL).open(),
                prepare(v3, CHANNEL, CHUNK, allow_unsigned=True),
            )
        first.join(30)
        assert not first.is_alive() and outcome[0].state is RolloutState.SUPERSEDED
        assert outcome[0].reason == "a newer rollout of the channel started"
        kit.wait_event("probation_passed", version=3, device_id=CANARY)
        retained = read_record(conn, TOPICS, CHANNEL)
        assert retained is not None and retained.version == 3 == newer.version
        assert retained.state is RolloutState.CANARY
        assert served_version(canary) == 3 and served_version(stable) == 1
    assert not [e for e in kit.events() if e["event"] in ("rolled_back", "rejected")]
