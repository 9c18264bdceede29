"""Model updates over MQTT against a real mosquitto: an agent serving a video pulls, verifies,
hot-swaps and rolls back models (docs/protocol.md), and a bad update never stops it serving."""

from __future__ import annotations

from pathlib import Path

from conftest import Broker
from updates_kit import Mqtt, agent_config, results, running_agent, served_version, variant, wait_until

from agent.store import BundleStore

UPDATE = ["available", "downloading", "verified", "activating", "activated", "probation_passed"]


def update_events(kit: Mqtt, version: int) -> list[str]:
    kinds = [e["event"] for e in kit.events() if e.get("version") == version]
    return [k for i, k in enumerate(kinds) if k != "downloading" or kinds[i - 1] != "downloading"]


def test_an_update_is_pulled_verified_swapped_in_and_passes_probation(
    mosquitto: Broker, tmp_path: Path
) -> None:
    kit = Mqtt(mosquitto)
    keys = agent_config(mosquitto, tmp_path, **{"source.rate": "all"})
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2")
    with running_agent(keys) as agent:
        kit.wait_event("probation_passed", version=1)
        blob = kit.publish(v2)
        kit.wait_event("probation_passed", version=2)
        assert served_version(agent) == 2
        wait_until(lambda: kit.status().get("model", {}).get("version") == 2, what="status v2")
        status = kit.status()
        assert status["channel"] == "lobby"
    assert update_events(kit, 2) == UPDATE
    activated = kit.wait_event("activated", version=2)
    assert activated["previous"] == 1 and activated["sha256"] == blob.sha256
    out = results(tmp_path / "out.jsonl")
    indices = [r["frame"]["index"] for r in out]
    assert indices == list(range(len(out))), "a frame was lost"
    versions = [r["model"]["version"] for r in out]
    switch = versions.index(2)
    assert set(versions[:switch]) == {1} and set(versions[switch:]) == {2}
    assert agent.grabber is not None and agent.pipeline is not None
    assert agent.pipeline.stats.failed == 0
    # frames in vs results out: at most the frame read as it stopped is left (counted dropped)
    assert agent.grabber.stats.read - len(out) == agent.grabber.stats.dropped <= 1
    store = BundleStore(tmp_path / "state")
    assert store.sha("active") == store.sha("good") == blob.sha256
    assert store.previous() is not None and store.previous().name == v1_sha(agent)
    assert not list((tmp_path / "state" / "staging").glob("*"))


def v1_sha(agent: object) -> str:
    from test_agent_kit import cached_bundle

    return cached_bundle("yolo").manifest.model.sha256
