"""The update protocol's messages: releases, chunking, events and commands (pure logic)."""

from __future__ import annotations

import hashlib
import json

import pytest
from test_agent_kit import cached_bundle

from agent.bundle.loading import load_bundle
from agent.updates.protocol import (
    DEFAULT_CHUNK_SIZE,
    EventKind,
    Limits,
    ProtocolError,
    Release,
    Topics,
    cut,
    event,
    followed_stages,
    parse_command,
    parse_release,
)


@pytest.fixture(scope="module")
def release() -> Release:
    bundle = load_bundle(cached_bundle("ssd_postprocess").path)
    blob, _ = cut(bundle.model_bytes(), 4096)
    return Release(channel="lobby", manifest=bundle.manifest, blob=blob)


def test_cut_chunks_reassemble_to_the_model_and_name_each_chunk() -> None:
    data = bytes(range(256)) * 41  # 10,496 bytes: two full chunks and a short one
    blob, chunks = cut(data, 4096)
    assert blob.chunks == len(chunks) == 3 and b"".join(chunks) == data
    assert (
        [len(c) for c in chunks] == [4096, 4096, 2304] == [blob.chunk_length(i) for i in range(3)]
    )
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.chunk_sha256 == [hashlib.sha256(c).hexdigest() for c in chunks]
    with pytest.raises(ProtocolError, match="chunk size"):
        cut(data, 100)


def test_default_chunks_fit_a_128_kb_broker_limit() -> None:
    assert DEFAULT_CHUNK_SIZE + 200 < 128 * 1000  # payload plus a topic of up to 200 bytes


def test_a_release_round_trips_and_refuses_a_blob_that_is_not_its_model(release: Release) -> None:
    again = parse_release(release.to_bytes(), Limits())
    assert again == release and json.loads(release.to_bytes())["schema"] == "edgegap.release/1"
    body = json.loads(release.to_bytes())
    body["blob"]["sha256"] = "0" * 64
    with pytest.raises(ProtocolError, match="not the model the manifest names"):
        parse_release(json.dumps(body).encode(), Limits())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: b.update(schema="edgegap.release/9"), "unknown release schema"),
        (lambda b: b["blob"].update(chunks=b["blob"]["chunks"] + 1), "cannot hold"),
        (lambda b: b["blob"]["chunk_sha256"].pop(), "chunk hashes"),
        (lambda b: b["blob"].update(size=10**12), "over the"),
        (lambda b: b["blob"].update(chunks=10**9), "over the limit"),
        (lambda b: b.update(channel="../etc"), "channel"),
        (lambda b: b["manifest"].pop("model"), "manifest.model"),
    ],
)
def test_a_malformed_release_is_refused_with_its_reason(
    release: Release, change: object, reason: str
) -> None:
    body = json.loads(release.to_bytes())
    change(body)  # type: ignore[operator]
    with pytest.raises(ProtocolError, match=reason):
        parse_release(json.dumps(body).encode(), Limits())


def test_release_size_is_bounded_before_it_is_parsed() -> None:
    with pytest.raises(ProtocolError, match="over the 100-byte limit"):
        parse_release(b"{" + b" " * 200 + b"}", Limits(max_release_bytes=100))
    for raw in (b"not json", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(ProtocolError):
            parse_release(raw, Limits())


def test_topics_sit_under_the_prefix() -> None:
    t = Topics("edgegap/site-a/")
    assert t.release("lobby") == "edgegap/site-a/models/lobby/manifest"
    assert t.chunk("ab" * 32, 7) == f"edgegap/site-a/blobs/{'ab' * 32}/7"
    assert t.device("cam-1", "events") == "edgegap/site-a/devices/cam-1/events"
    assert t.release("lobby", "stable") == t.release("lobby")  # stable is the channel's own
    assert t.release("lobby", "canary") == "edgegap/site-a/models/lobby/canary/manifest"
    assert t.rollout("lobby") == "edgegap/site-a/models/lobby/rollout"


def test_a_group_follows_its_own_stage_and_every_later_one() -> None:
    assert followed_stages("stable") == ("stable",)
    assert followed_stages("canary") == ("canary", "stable")
    with pytest.raises(ProtocolError, match="unknown rollout group 'beta'"):
        followed_stages("beta")


@pytest.mark.parametrize(
    ("raw", "name", "reason"),
    [
        (b'{"cmd": "rollback"}', "rollback", None),
        (b'{"cmd": "rollback", "sha256": "' + b"ab" * 32 + b'"}', "rollback", None),
        (b'{"cmd": "rollback", "sha256": "AB"}', None, "64 lowercase hex digits"),
        (b'{"cmd": "pin", "version": 7}', "pin", None),
        (b'{"cmd": "set_threshold", "value": 0.4}', "set_threshold", None),
        (b'{"cmd": "pin", "version": "7"}', None, "pin needs a version"),
        (b'{"cmd": "set_threshold", "value": 2}', None, "between 0 and 1"),
        (b'{"cmd": "set_threshold", "value": true}', None, "between 0 and 1"),
        (b'{"cmd": "format_disk"}', None, "unknown command"),
        (b"[]", None, "JSON object"),
        (b"{", None, "not valid JSON"),
        (b'{"cmd": "status", "pad": "' + b"x" * 5000 + b'"}', None, "over 4096"),
    ],
)
def test_commands_parse_or_say_why_not(raw: bytes, name: str | None, reason: str | None) -> None:
    if reason is None:
        assert parse_command(raw).name == name
    else:
        with pytest.raises(ProtocolError, match=reason):
            parse_command(raw)


def test_events_carry_version_sha_and_reason_only_when_given() -> None:
    e = event(EventKind.REJECTED, "cam-1", 12.3456, 5, "ab" * 32, reason="bad signature")
    assert e == {
        "schema": "edgegap.event/1", "event": "rejected", "device_id": "cam-1", "ts": 12.346,
        "version": 5, "sha256": "ab" * 32, "reason": "bad signature",
    }  # fmt: skip
    assert "version" not in event(EventKind.COMMAND, "cam-1", 1.0, cmd="status", reason=None)
