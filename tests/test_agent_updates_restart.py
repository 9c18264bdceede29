"""Updates across outages and crashes: the broker restarted mid-transfer, and the agent process
SIGKILLed mid-download and during activation; each time it resumes from its staged chunks and
store, and serves a consistent model throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import Broker
from updates_kit import (
    Mqtt,
    agent_config,
    results,
    running_agent,
    served_version,
    variant,
    wait_until,
)

from agent.store import BundleStore
from agent.updates.protocol import cut

ROOT = Path(__file__).resolve().parents[1]


def staged(state: Path, sha: str) -> int:
    """Chunks staged whole: a chunk being written is a temp file beside them, not counted."""
    folder = state / "staging" / sha
    return sum(p.name.isdigit() for p in folder.iterdir()) if folder.is_dir() else 0


def test_a_broker_restart_mid_transfer_resumes_from_the_staged_chunks(
    mosquitto: Broker, tmp_path: Path
) -> None:
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2")
    blob, _ = cut(v2.model_bytes(), 1024)
    half = blob.chunks // 2
    assert half >= 2
    kit = Mqtt(mosquitto)
    with running_agent(agent_config(mosquitto, tmp_path)) as agent:
        kit.wait_event("probation_passed", version=1)
        kit.publish(v2, only=range(half))
        wait_until(lambda: staged(tmp_path / "state", blob.sha256) == half, what="half staged")
        kit.close()
        mosquitto.stop()  # its retained messages go with it (no persistence)
        mosquitto.start()
        kit = Mqtt(mosquitto)
        # Only the second half is on the broker now: the first must come from staging.
        kit.publish(v2, only=range(half, blob.chunks))
        kit.wait_event("probation_passed", version=2, timeout=60)
        assert served_version(agent) == 2
    assert "rejected" not in kit.kinds()
    out = results(tmp_path / "out.jsonl")
    assert [r["frame"]["index"] for r in out] == list(range(len(out)))


def _config_file(mosquitto: Broker, tmp: Path) -> Path:
    keys = agent_config(mosquitto, tmp)
    data: dict[str, object] = {}
    for dotted, value in keys.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
        node[leaf] = value
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _spawn(config: Path, tmp: Path, n: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / f"agent{n}.log").open("wb"),
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_sigkill_mid_download_then_restart_resumes(mosquitto: Broker, tmp_path: Path) -> None:
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2")
    blob, _ = cut(v2.model_bytes(), 1024)
    half = blob.chunks // 2
    config = _config_file(mosquitto, tmp_path)
    kit = Mqtt(mosquitto)
    proc = _spawn(config, tmp_path, 1)
    try:
        kit.wait_event("probation_passed", version=1, timeout=60)
        kit.publish(v2, only=range(half))
        wait_until(lambda: staged(tmp_path / "state", blob.sha256) == half, what="half staged")
        _kill(proc)
        kit.publish(v2, only=range(half, blob.chunks))
        before = len(kit.events())
        proc = _spawn(config, tmp_path, 2)
        kit.wait_event("probation_passed", version=2, timeout=60)
    finally:
        _kill(proc)
    events = kit.events()[before:]
    # the restarted agent's own events: from its `available` on (the killed one's may come late)
    restart = max(i for i, e in enumerate(events) if e["event"] == "available")
    after = events[restart:]
    progress = [e["progress"]["chunks"] for e in after if e["event"] == "downloading"]
    assert progress and progress[0] > half, progress  # it did not start from chunk 0 again
    assert "rejected" not in [e["event"] for e in after]
    assert BundleStore(tmp_path / "state").sha("active") == blob.sha256


def test_sigkill_during_activation_restarts_on_a_consistent_model(
    mosquitto: Broker, tmp_path: Path
) -> None:
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2")
    config = _config_file(mosquitto, tmp_path)
    kit = Mqtt(mosquitto)
    proc = _spawn(config, tmp_path, 1)
    try:
        kit.wait_event("probation_passed", version=1, timeout=60)
        blob = kit.publish(v2)
        kit.wait_event("activating", version=2)
        _kill(proc)
        v1 = BundleStore(tmp_path / "state").sha("good")
        assert BundleStore(tmp_path / "state").sha("active") in (blob.sha256, v1)
        lines = len(results(tmp_path / "out.jsonl"))
        proc = _spawn(config, tmp_path, 2)
        wait_until(lambda: len(results(tmp_path / "out.jsonl")) > lines + 5, what="serving again")
        restarted = results(tmp_path / "out.jsonl")[lines:]
        assert {r["model"]["version"] for r in restarted} <= {1, 2}
        kit.wait_event("probation_passed", version=2, timeout=60)
    finally:
        _kill(proc)
    store = BundleStore(tmp_path / "state")
    assert store.sha("active") == store.sha("good") == blob.sha256


def test_a_crash_looping_bundle_falls_back_to_the_last_good_one(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """v2 is active but never passed probation; the third start serves the good v1 instead."""
    kit = Mqtt(mosquitto)
    keys = agent_config(mosquitto, tmp_path, **{"updates.probation_s": 3600.0})
    with running_agent(agent_config(mosquitto, tmp_path)):
        kit.wait_event("probation_passed", version=1)
        blob = kit.publish(variant("ssd_postprocess", 2, tmp_path / "v2"))
        kit.wait_event("activated", version=2)
    # v2 is active and on probation (never ends: probation_s is an hour): starts 2 and 3 crash
    for _ in range(2):
        with running_agent(keys) as agent:
            assert served_version(agent) == 2
    with running_agent(keys) as agent:
        assert served_version(agent) == 1
    reason = BundleStore(tmp_path / "state").rejections.reason(blob.sha256)
    assert reason == "crash loop: 3 starts without passing probation"
