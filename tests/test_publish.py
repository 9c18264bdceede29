"""`edgegap publish` against a real mosquitto: chunks, meta and release read back as a late
subscriber sees them; refusals of old versions, unsigned bundles, bad URLs and dead brokers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

pytest.importorskip("tensorflow")

from conftest import Broker, free_port  # noqa: E402
from publish_kit import bundle, converted, public_key, publish_raw, retained  # noqa: E402
from test_agent_mqtt import PASSWORD, tls_broker  # noqa: E402, F401
from updates_kit import Mqtt, wait_until  # noqa: E402

from agent.bundle.manifest import Manifest  # noqa: E402
from agent.bundle.signing import load_public_key, verify_manifest  # noqa: E402
from agent.updates.protocol import Limits, Topics, parse_release  # noqa: E402
from converter.cli import cli  # noqa: E402

TOPICS = Topics("edgegap/default")


def run(*args: Any, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def publish(broker: Broker, path: Path, *more: Any) -> Result:
    return run("publish", path, "--broker", broker.url, "--channel", "lobby", *more)


def test_publish_then_a_late_subscriber_reassembles_the_model(
    mosquitto: Broker, tmp_path: Path
) -> None:
    path = bundle(tmp_path / "b", version=3)
    result = publish(mosquitto, path, "--chunk-size", 1024, "--key", public_key())
    assert result.exit_code == 0, result.output
    assert "published tiny v3" in result.output and "(was empty)" in result.output

    releases = retained(mosquitto.host, mosquitto.port, TOPICS.release("lobby"))
    release = parse_release(releases[TOPICS.release("lobby")], Limits())
    on_disk = json.loads((path / "manifest.json").read_text())
    assert release.to_bytes() and json.loads(release.to_bytes())["manifest"] == on_disk  # verbatim
    verify_manifest(release.manifest, [load_public_key(public_key())])
    blob = release.blob
    assert blob.chunk_size == 1024 and blob.chunks > 1

    chunks = retained(mosquitto.host, mosquitto.port, f"edgegap/default/blobs/{blob.sha256}/+")
    meta = json.loads(chunks.pop(TOPICS.blob_meta(blob.sha256)))
    assert meta == {
        "sha256": blob.sha256,
        "size": blob.size,
        "chunks": blob.chunks,
        "channel": "lobby",
    }
    data = b"".join(chunks[TOPICS.chunk(blob.sha256, i)] for i in range(blob.chunks))
    assert len(chunks) == blob.chunks
    assert data == (path / "model.tflite").read_bytes()
    assert hashlib.sha256(data).hexdigest() == blob.sha256 == release.manifest.model.sha256
    assert [
        hashlib.sha256(chunks[TOPICS.chunk(blob.sha256, i)]).hexdigest() for i in range(blob.chunks)
    ] == blob.chunk_sha256


def test_the_release_is_announced_before_its_chunks_and_retained_after_them(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """Devices online pull while the chunks are still being sent (the announce); a device that
    comes later finds the retained release only once every chunk is on the broker."""
    live = Mqtt(mosquitto, topic="edgegap/default/#")
    try:
        result = publish(mosquitto, bundle(tmp_path / "b", version=4), "--chunk-size", 1024)
        assert result.exit_code == 0, result.output
        wait_until(lambda: any(t == TOPICS.release("lobby") for t, _ in live.messages))
    finally:
        live.close()
    topics = [t for t, _ in live.messages]
    release = dict(live.messages)[TOPICS.release("lobby")]
    assert topics[0] == TOPICS.announce("lobby") and topics[-1] == TOPICS.release("lobby")
    assert live.messages[0][1] == release  # the same signed release, byte for byte
    assert all(t.startswith("edgegap/default/blobs/") for t in topics[1:-1])
    assert len(topics) == parse_release(release, Limits()).blob.chunks + 3  # and the meta
    assert retained(mosquitto.host, mosquitto.port, TOPICS.announce("lobby"), wait=0.3) == {}


def test_a_version_not_above_the_channel_is_refused(mosquitto: Broker, tmp_path: Path) -> None:
    assert publish(mosquitto, bundle(tmp_path / "v5", version=5)).exit_code == 0
    for version in (5, 4):
        result = publish(mosquitto, bundle(tmp_path / f"again{version}", version=version))
        assert result.exit_code == 1
        assert f"channel lobby is at version 5; version {version} is not above it" in result.output
    ok = publish(mosquitto, bundle(tmp_path / "v6", version=6))
    assert ok.exit_code == 0 and "(was v5)" in ok.output
    # Another channel is another sequence.
    other = run(
        "publish", bundle(tmp_path / "o", version=1), "--broker", mosquitto.url, "--channel", "dock"
    )
    assert other.exit_code == 0, other.output


def test_an_unsigned_bundle_is_refused_unless_allowed(mosquitto: Broker, tmp_path: Path) -> None:
    path = bundle(tmp_path / "u", version=2, signed=False)
    refused = publish(mosquitto, path)
    assert refused.exit_code == 1 and "is not signed" in refused.output
    assert retained(mosquitto.host, mosquitto.port, TOPICS.release("lobby"), wait=0.3) == {}
    allowed = publish(mosquitto, path, "--allow-unsigned")
    assert allowed.exit_code == 0, allowed.output


def test_a_bundle_signed_by_another_key_is_refused_with_key(
    mosquitto: Broker, tmp_path: Path
) -> None:
    from agent.bundle.signing import generate_keypair

    _, other = generate_keypair(tmp_path / "other")
    result = publish(mosquitto, converted(), "--key", other)
    assert result.exit_code == 1 and "not trusted" in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:1883", "must start with mqtt:// or mqtts://"),
        ("mqtt://user:secret@127.0.0.1", "must not carry a password"),
        ("mqtt://127.0.0.1:99999", "bad port"),
        ("mqtt://", "no host"),
    ],
)
def test_a_bad_url_is_a_one_line_error(url: str, message: str) -> None:
    result = run("publish", converted(), "--broker", url, "--channel", "lobby")
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_an_unreachable_broker_is_a_one_line_error() -> None:
    result = run(
        "publish",
        converted(),
        "--broker",
        f"mqtt://127.0.0.1:{free_port()}",
        "--channel",
        "lobby",
        "--timeout",
        2,
    )
    assert result.exit_code == 1
    assert "is unreachable: connection refused" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_not_a_bundle_is_a_one_line_error(mosquitto: Broker, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = publish(mosquitto, tmp_path / "empty")
    assert result.exit_code == 1 and "is not a bundle" in result.output
    broken = bundle(tmp_path / "broken", version=2)
    (broken / "model.tflite").write_bytes(b"not the model")
    result = publish(mosquitto, broken)
    assert result.exit_code == 1 and "tampered or truncated" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_garbage_retained_release_counts_as_an_empty_channel(
    mosquitto: Broker, tmp_path: Path
) -> None:
    publish_raw(mosquitto.host, mosquitto.port, TOPICS.release("lobby"), b"{not json")
    assert publish(mosquitto, bundle(tmp_path / "b", version=1)).exit_code == 0


def test_the_manifest_model_is_what_the_release_names(tmp_path: Path) -> None:
    from converter.publishing import prepare

    prepared = prepare(bundle(tmp_path / "b", version=2), "lobby", 2048)
    m: Manifest = prepared.manifest
    assert (prepared.release.blob.sha256, prepared.release.blob.size) == (
        m.model.sha256,
        m.model.size,
    )
    assert b"".join(prepared.chunks) == (tmp_path / "b" / "model.tflite").read_bytes()


def test_publish_over_tls_with_a_password_file(
    tls_broker: tuple[Broker, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    broker, ca = tls_broker
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    url = f"mqtts://cam@127.0.0.1:{broker.port}"
    args = [
        "publish",
        bundle(tmp_path / "b", version=1),
        "--broker",
        url,
        "--channel",
        "lobby",
        "--ca",
        ca,
    ]
    ok = run(*args, "--password-file", secret)
    assert ok.exit_code == 0, ok.output
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    refused = run(*args, "--password-file", wrong)
    assert refused.exit_code == 1 and "refused the connection" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    untrusted = run(
        "publish", converted(), "--broker", url, "--channel", "lobby", "--password-file", secret
    )
    assert untrusted.exit_code == 1 and "TLS handshake" in untrusted.output, untrusted.output
