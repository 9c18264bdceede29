"""Model updates over MQTT against a real mosquitto: an agent serving a video pulls, verifies,
hot-swaps and rolls back models (docs/protocol.md), and a bad update never stops it serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from updates_kit import (
    CHANNEL,
    CHUNK,
    TOPICS,
    Mqtt,
    agent_config,
    broken_golden,
    failing_bundle,
    results,
    running_agent,
    served_version,
    variant,
    wait_until,
)

from agent.bundle.manifest import Decoder
from agent.bundle.signing import generate_keypair, load_private_key
from agent.runtime import compiled
from agent.store import BundleStore
from agent.updates.protocol import Release, cut

UPDATE = ["available", "downloading", "verified", "activating", "activated", "probation_passed"]


def update_events(kit: Mqtt, version: int) -> list[str]:
    kinds = [e["event"] for e in kit.events() if e.get("version") == version]
    return [k for i, k in enumerate(kinds) if k != "downloading" or kinds[i - 1] != "downloading"]


def test_an_update_is_pulled_verified_swapped_in_and_passes_probation(
    mosquitto: Broker, tmp_path: Path
) -> None:
    kit = Mqtt(mosquitto)
    keys = agent_config(mosquitto, tmp_path)
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
    # frames in vs results out: every frame index up to the last result has its result; only
    # frames still in flight when it stopped have none
    assert agent.grabber.stats.read - len(out) <= 2
    store = BundleStore(tmp_path / "state")
    assert store.sha("active") == store.sha("good") == blob.sha256
    assert store.previous() is not None and store.previous().name == v1_sha(agent)
    assert not list((tmp_path / "state" / "staging").glob("*"))
    # v2 was loaded over a weight cache a child built, named by its sha256 in its bundle's folder
    if compiled.unavailable() is None:
        assert isinstance(agent.pipeline.served.model, compiled.CompiledLoadedModel)
        assert compiled.cache_path(store.path(blob.sha256), blob.sha256).stat().st_size > 0


def test_an_announced_release_is_pulled_as_its_chunks_arrive_and_a_cut_publish_resumes(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """The announce comes before any chunk is on the broker: the agent subscribes to chunks not
    yet published and takes them as they come. A publish cut short leaves the retained release
    as it was; the chunk that never came rejects the update, the old model serving; the full
    publish later resumes from the chunks already staged."""
    kit = Mqtt(mosquitto)
    keys = agent_config(mosquitto, tmp_path, **{"updates.chunk_timeout_s": 0.5})
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2")
    blob, parts = cut(v2.model_bytes(), CHUNK)
    with running_agent(keys) as agent:
        kit.wait_event("probation_passed", version=1)
        kit.release(v2.manifest, blob, announce=True)
        kit.wait_event("available", version=2)  # before a single chunk was published
        kit.chunks(blob, parts, only=[i for i in range(blob.chunks) if i != 3])
        rejected = kit.wait_event("rejected", version=2)
        assert "chunk 3 never arrived" in rejected["reason"]
        assert served_version(agent) == 1
        staged = tmp_path / "state" / "staging" / blob.sha256
        assert len(list(staged.glob("[0-9]*"))) == blob.chunks - 1
        kit.publish(v2)  # the whole publish: chunks, meta, then the retained release
        kit.wait_event("probation_passed", version=2)
    kinds = update_events(kit, 2)
    assert kinds[:3] == ["available", "downloading", "rejected"], kinds
    assert kinds[3:] == UPDATE, kinds
    out = results(tmp_path / "out.jsonl")
    assert [r["frame"]["index"] for r in out] == list(range(len(out))), "a frame was lost"


def v1_sha(agent: object) -> str:
    from test_agent_kit import cached_bundle

    return cached_bundle("yolo").manifest.model.sha256


# ---- bad updates: each is rejected with its reason, and v1 keeps serving ----------------------


def _keys(tmp: Path) -> tuple[Ed25519PrivateKey, Path, Ed25519PrivateKey]:
    """A trusted key (private, public file) and a foreign private key."""
    priv, pub = generate_keypair(tmp / "trusted")
    other, _ = generate_keypair(tmp / "foreign")
    return load_private_key(priv), pub, load_private_key(other)


def corrupt_chunk(kit: Mqtt, tmp: Path) -> None:
    v2 = variant("ssd_postprocess", 2, tmp / "v2")
    blob, parts = cut(v2.model_bytes(), CHUNK)
    parts[2] = bytes([parts[2][0] ^ 0xFF]) + parts[2][1:]
    kit.chunks(blob, parts)
    kit.release(v2.manifest, blob)


def wrong_total_sha(kit: Mqtt, tmp: Path) -> None:
    v2 = variant("ssd_postprocess", 2, tmp / "v2")
    data = bytearray(v2.model_bytes())
    data[-1] ^= 0xFF
    forged, parts = cut(bytes(data), CHUNK)  # chunk hashes of the wrong bytes...
    blob = forged.model_copy(update={"sha256": v2.manifest.model.sha256})  # ...under the signed sha
    kit.chunks(blob, parts)
    kit.release(v2.manifest, blob)


def altered_after_signing(kit: Mqtt, tmp: Path) -> None:
    key = load_private_key(tmp / "trusted" / "edgegap.key")
    v2 = variant("ssd_postprocess", 2, tmp / "v2", key)
    kit.publish(v2, manifest=v2.manifest.model_copy(update={"labels": ["cat", "dog"]}))


def unsigned(kit: Mqtt, tmp: Path) -> None:
    kit.publish(variant("ssd_postprocess", 2, tmp / "v2"))


def foreign_key(kit: Mqtt, tmp: Path) -> None:
    key = load_private_key(tmp / "foreign" / "edgegap.key")
    kit.publish(variant("ssd_postprocess", 2, tmp / "v2", key))


def older_version(kit: Mqtt, tmp: Path) -> None:
    kit.publish(variant("ssd_postprocess", 0, tmp / "v0"))


def equal_version(kit: Mqtt, tmp: Path) -> None:
    kit.publish(variant("ssd_postprocess", 1, tmp / "v1b"))


def oversized_message(kit: Mqtt, tmp: Path) -> None:
    v2 = variant("ssd_postprocess", 2, tmp / "v2")
    blob, _ = cut(v2.model_bytes(), CHUNK)
    body = json.loads(Release(channel=CHANNEL, manifest=v2.manifest, blob=blob).to_bytes())
    body["published"] = "x" * (2 * 1024 * 1024)
    kit.put(TOPICS.release(CHANNEL), json.dumps(body).encode())


def oversized_model(kit: Mqtt, tmp: Path) -> None:
    kit.publish(variant("ssd_postprocess", 2, tmp / "v2"))  # the agent takes 2000 bytes at most


def too_many_chunks(kit: Mqtt, tmp: Path) -> None:
    kit.publish(variant("ssd_postprocess", 2, tmp / "v2"))  # the agent takes 3 chunks at most


def missing_chunk(kit: Mqtt, tmp: Path) -> None:
    v2 = variant("ssd_postprocess", 2, tmp / "v2")
    blob, _ = cut(v2.model_bytes(), CHUNK)
    kit.publish(v2, only=[i for i in range(blob.chunks) if i != 3])


def wrong_profile(kit: Mqtt, tmp: Path) -> None:
    kit.publish(variant("ssd_postprocess", 2, tmp / "v2", profile="raspberry-pi-4"))


def unfeedable_input(kit: Mqtt, tmp: Path) -> None:
    v2 = variant("ssd_postprocess", 2, tmp / "v2")
    spec = v2.manifest.input.model_copy(update={"shape": [1, 64, 64, 4]})
    kit.publish(v2, manifest=v2.manifest.model_copy(update={"input": spec}))


def misfit_decoder(kit: Mqtt, tmp: Path) -> None:
    kit.publish(variant("ssd_postprocess", 2, tmp / "v2", decoder=Decoder.YOLO))


def malformed_json(kit: Mqtt, tmp: Path) -> None:
    kit.put(TOPICS.release(CHANNEL), b'{"schema": "edgegap.release/1", "channel": ')


def golden_fails(kit: Mqtt, tmp: Path) -> None:
    v2 = variant("ssd_postprocess", 2, tmp / "v2")
    v2 = variant("ssd_postprocess", 2, tmp / "v2", golden=broken_golden(v2.manifest).golden)
    kit.publish(v2)


SIGNED = {"signed": True}
BAD: dict[str, tuple[Callable[[Mqtt, Path], None], str, dict[str, Any]]] = {
    "corrupt chunk": (corrupt_chunk, "chunk 2 of", {}),
    "wrong total sha256": (wrong_total_sha, "the manifest says", {}),
    "altered after signing": (altered_after_signing, "signature does not verify", SIGNED),
    "unsigned with keys": (unsigned, "signature: bundle is not signed", SIGNED),
    "foreign key": (foreign_key, "which is not trusted", SIGNED),
    "older version": (older_version, "version 0 is not above the active version 1", {}),
    "equal version": (equal_version, "version 1 is not above the active version 1", {}),
    "oversized message": (oversized_message, "over the 2097152-byte limit", {}),
    "oversized model": (
        oversized_model,
        "over the 2000-byte limit",
        {"updates.max_bundle_bytes": 2000},
    ),
    "too many chunks": (too_many_chunks, "chunks, over the limit of 3", {"updates.max_chunks": 3}),
    "missing chunk": (missing_chunk, "chunk 3 never arrived", {"updates.chunk_timeout_s": 0.2}),
    "wrong profile": (
        wrong_profile,
        "profile 'raspberry-pi-4' is not accepted here (x86-avx2)",
        {},
    ),
    "unfeedable input": (unfeedable_input, "is not an image [1, H, W, 1 or 3]", {}),
    "decoder misfits outputs": (misfit_decoder, "decoder yolo needs an output with role yolo", {}),
    "malformed JSON": (malformed_json, "release is not valid JSON", {}),
    "golden check fails": (golden_fails, "golden check failed", {}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_update_is_rejected_and_the_old_model_keeps_serving(
    case: str, mosquitto: Broker, tmp_path: Path
) -> None:
    publish, reason, overrides = BAD[case]
    overrides = dict(overrides)
    if overrides.pop("signed", False):
        key, pub, _ = _keys(tmp_path)
        overrides["bundle.path"] = str(variant("yolo", 1, tmp_path / "v1", key).path)
        overrides["bundle.trusted_keys"] = [str(pub)]
    kit = Mqtt(mosquitto)
    with running_agent(agent_config(mosquitto, tmp_path, **overrides)) as agent:
        kit.wait_event("probation_passed", version=1)
        publish(kit, tmp_path)
        rejected = kit.wait_event("rejected")
        assert reason in rejected["reason"], rejected
        seen = len(results(tmp_path / "out.jsonl"))
        wait_until(lambda: len(results(tmp_path / "out.jsonl")) > seen + 5, what="more frames")
        assert served_version(agent) == 1
        assert not [k for k in kit.kinds() if k in ("activated", "rolled_back")]
    out = results(tmp_path / "out.jsonl")
    assert {r["model"]["version"] for r in out} == {1}
    assert [r["frame"]["index"] for r in out] == list(range(len(out)))


# ---- probation, rollback, commands ------------------------------------------------------------


def test_probation_rolls_back_a_model_slower_than_its_manifest_says(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """v2's manifest claims 0.0001 ms per invoke: its median is far over 3x that, so it goes."""
    kit = Mqtt(mosquitto)
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2", metrics={"latency_ms_p50": 0.0001})
    v3 = variant("ssd_raw", 3, tmp_path / "v3")
    with running_agent(agent_config(mosquitto, tmp_path)) as agent:
        kit.wait_event("probation_passed", version=1)
        blob = kit.publish(v2)
        rolled = kit.wait_event("rolled_back", version=2)
        assert rolled["to"] == 1 and "median latency" in rolled["reason"], rolled
        assert "over 3 x the manifest's latency" in rolled["reason"]
        assert served_version(agent) == 1
        store = BundleStore(tmp_path / "state")
        assert store.rejections.holds(blob.sha256, 2) and store.sha("active") != blob.sha256
        kit.command({"cmd": "reload"})  # the same release again: its model is not tried again
        kit.wait_event("command", cmd="reload")
        rejected = kit.wait_event("rejected", version=2)
        assert "was rejected before" in rejected["reason"]
        kit.publish(v3)  # a newer version is tried
        kit.wait_event("probation_passed", version=3)
        assert served_version(agent) == 3
    assert update_events(kit, 2) == [*UPDATE[:-1], "rolled_back", "rejected"]


def test_rollback_pin_unpin_and_threshold_commands(mosquitto: Broker, tmp_path: Path) -> None:
    kit = Mqtt(mosquitto)
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2")
    with running_agent(agent_config(mosquitto, tmp_path)) as agent:
        kit.wait_event("probation_passed", version=1)
        kit.publish(v2)
        kit.wait_event("probation_passed", version=2)
        kit.command({"cmd": "rollback"})
        rolled = kit.wait_event("rolled_back")
        assert (rolled["version"], rolled["to"], rolled["reason"]) == (2, 1, "rollback command")
        kit.wait_event("command", cmd="rollback", ok=True)
        assert served_version(agent) == 1
        # the release of v2 is still retained, but a pinned device ignores it
        kit.command({"cmd": "pin", "version": 1})
        kit.wait_event("command", cmd="pin", ok=True)
        kit.command({"cmd": "pin", "version": 9})
        refused = kit.wait_event("command", cmd="pin", ok=False)
        assert refused["reason"] == "version 9 is not in the bundle store"
        kit.command({"cmd": "reload"})
        kit.wait_event("command", cmd="reload", ok=True)
        assert served_version(agent) == 1
        kit.command({"cmd": "set_threshold", "value": 1.0})
        kit.wait_event("command", cmd="set_threshold", ok=True)
        seen = len(results(tmp_path / "out.jsonl"))
        wait_until(lambda: len(results(tmp_path / "out.jsonl")) > seen + 5, what="more frames")
        assert results(tmp_path / "out.jsonl")[-1]["detections"] == []
        before = len(kit.events())
        for raw in (b"not json", b'{"cmd": "reboot"}', b'{"cmd": "pin"}', b"[1]"):
            kit.command(raw)
        wait_until(lambda: len(kit.events()) >= before + 4, what="four refusals")
        refusals = kit.events()[before:]
        assert [(e["event"], e.get("cmd"), e["ok"]) for e in refusals] == [
            ("command", None, False), ("command", "reboot", False),
            ("command", "pin", False), ("command", None, False),
        ]  # fmt: skip
        assert all(e["reason"] for e in refusals) and served_version(agent) == 1
        kit.command({"cmd": "unpin"})  # follows the channel again: v2 comes back
        kit.wait_event("activated", version=2, previous=1)
        wait_until(lambda: served_version(agent) == 2, what="v2 served")


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_hundred_swaps_back_and_forth_lose_no_frame(mosquitto: Broker, tmp_path: Path) -> None:
    """pin alternates v1 and v2 (each loaded anew, off the frame path) 100 times while frames
    flow in lockstep; every frame has its result, and memory does not grow with the swaps."""
    kit = Mqtt(mosquitto)
    keys = agent_config(mosquitto, tmp_path)
    rss: list[int] = []
    with running_agent(keys) as agent:
        kit.wait_event("probation_passed", version=1)
        kit.publish(variant("ssd_postprocess", 2, tmp_path / "v2"))
        kit.wait_event("probation_passed", version=2)
        for n in range(100):
            version = 1 + n % 2
            before = len(kit.events())
            kit.command({"cmd": "pin", "version": version})
            wait_until(lambda b=before: kit.kinds()[b:].count("command") == 1, what=f"pin {n}")
            assert kit.events()[-1]["ok"] and served_version(agent) == version
            if n in (9, 99):
                rss.append(_rss_kib())
        assert agent.pipeline is not None and agent.pipeline.stats.failed == 0
    out = results(tmp_path / "out.jsonl")
    assert [r["frame"]["index"] for r in out] == list(range(len(out))), "a frame was lost"
    versions = [r["model"]["version"] for r in out]
    swaps = [i for i in range(1, len(out)) if versions[i] != versions[i - 1]]
    assert len(swaps) == 101  # v1 -> v2 by the update, then 100 pins
    gaps = [out[i]["sent"] - out[i - 1]["sent"] for i in range(1, len(out))]
    at_swap = sorted(gaps[i - 1] for i in swaps)
    usual = sorted(gaps)[len(gaps) // 2]
    print(
        f"\n{len(out)} frames, {len(swaps)} swaps, 0 lost; frame gap median {usual * 1e3:.2f} ms, "
        f"at a swap median {at_swap[len(at_swap) // 2] * 1e3:.2f} ms, max {at_swap[-1] * 1e3:.2f} ms; "
        f"RSS after 10 swaps {rss[0] / 1024:.1f} MiB, after 100 {rss[1] / 1024:.1f} MiB"
    )
    assert rss[1] - rss[0] < 64 * 1024, rss


def test_probation_rolls_back_a_model_whose_invoke_fails_on_real_frames(
    mosquitto: Broker, tmp_path: Path
) -> None:
    kit = Mqtt(mosquitto)
    with running_agent(agent_config(mosquitto, tmp_path)) as agent:
        kit.wait_event("probation_passed", version=1)
        blob = kit.publish(failing_bundle(2, tmp_path / "v2"))
        rolled = kit.wait_event("rolled_back", version=2)
        assert rolled["to"] == 1 and rolled["reason"].startswith("invoke error:"), rolled
        # over a weight cache, LiteRT's CompiledModel names no op (its log line does)
        cached = compiled.unavailable() is None
        detail = "Failed to invoke the compiled model" if cached else "gather index out of bounds"
        assert detail in rolled["reason"], rolled
        seen = len(results(tmp_path / "out.jsonl"))
        wait_until(lambda: len(results(tmp_path / "out.jsonl")) > seen + 5, what="more frames")
        assert served_version(agent) == 1
        assert BundleStore(tmp_path / "state").rejections.holds(blob.sha256, 2)
    assert update_events(kit, 2) == [*UPDATE[:-1], "rolled_back"]
    out = results(tmp_path / "out.jsonl")
    assert {r["model"]["version"] for r in out} == {1}  # the failed frames had no result
