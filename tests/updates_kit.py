"""Test kit for model updates: bundle variants, a publisher that writes exactly what
docs/protocol.md specifies (with agent.updates.protocol and paho), an event recorder, and an
agent run in a thread on a real video against the real broker."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from conftest import Broker
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from test_agent_kit import cached_bundle, write_video

from agent.app import Agent
from agent.bundle.golden import record_golden
from agent.bundle.loading import Bundle, load_bundle, write_bundle
from agent.bundle.manifest import Decoder, InputSpec, Manifest, ModelFile, OutputRole, OutputSpec
from agent.bundle.signing import sign_manifest
from agent.config import load_config
from agent.runtime import open_model
from agent.updates.protocol import Blob, Release, Topics, cut

PREFIX = "edgegap/test"
CHANNEL = "lobby"
DEVICE = "cam-1"
TOPICS = Topics(PREFIX)
CHUNK = 1024


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not met in {timeout} s"
        time.sleep(0.01)


def variant(
    layout: str,
    version: int,
    out: Path,
    key: Ed25519PrivateKey | None = None,
    **changes: Any,
) -> Bundle:
    """The kit's converted bundle of a layout, as another version (signed by key, if given).
    Different layouts are different models (different sha256)."""
    base = load_bundle(cached_bundle(layout).path)
    manifest = base.manifest.model_copy(update={"version": version, **changes})
    if key is not None:
        manifest = sign_manifest(manifest, key)
    return write_bundle(out, base.model_bytes(), manifest)


def broken_golden(m: Manifest) -> Manifest:
    """The manifest with golden outputs the model cannot reproduce (all zeros, tolerance 0)."""
    assert m.golden is not None
    zero = [
        [
            base64.b64encode(
                np.zeros_like(np.frombuffer(base64.b64decode(e), "<f4")).tobytes()
            ).decode()
            for e in outs
        ]
        for outs in m.golden.expected
    ]
    golden = m.golden.model_copy(update={"expected": zero, "atol": [0.0] * len(m.golden.atol)})
    return m.model_copy(update={"golden": golden})


@cache
def _fails_on_frames() -> bytes:
    """A float classifier that reproduces its golden outputs (random pixels, mean near 0.5) and
    runs on zeros, but whose invoke fails on the kit's dark video frames (mean near 0.01): a
    GATHER indexed out of bounds when the mean pixel is between 0.001 and 0.3."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 64, 64, 3], tf.float32)])
    def serve(x: Any) -> Any:
        mean = tf.reduce_mean(x)
        index = tf.reshape(tf.cast(tf.logical_and(mean > 0.001, mean < 0.3), tf.int32) * 1000, [1])
        table = tf.constant([[0.5, 0.5]], tf.float32) + tf.reduce_max(x) * 0.0
        return tf.gather(table, index)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], serve
    )
    return bytes(converter.convert())


def failing_bundle(version: int, out: Path) -> Bundle:
    """A bundle whose model passes every check on load and fails its invoke on real frames."""
    content = _fails_on_frames()
    loaded = open_model(content)
    inp, outp = loaded.inputs[0], loaded.outputs[0]
    manifest = Manifest(
        name="fails-on-frames", version=version, profile="x86-avx2",
        created="2026-01-01T00:00:00Z", task="classification", decoder=Decoder.CLASSIFICATION,
        model=ModelFile(sha256=sha_of(content), size=len(content)),
        input=InputSpec(name=inp.name, shape=list(inp.shape), dtype="float32", mean=[0.0], std=[255.0]),
        outputs=[OutputSpec(name=outp.name, index=outp.index, role=OutputRole.PROBABILITIES,
                            shape=list(outp.shape), dtype="float32")],
        labels=["red", "green"],
    )  # fmt: skip
    manifest = manifest.model_copy(update={"golden": record_golden(loaded, manifest)})
    return write_bundle(out, content, manifest)


class Mqtt:
    """A paho client that publishes releases and chunks and records what it subscribes to."""

    def __init__(self, broker: Broker, topic: str = f"{PREFIX}/devices/{DEVICE}/#") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"kit-{time.monotonic_ns()}"
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10), "kit client did not connect"

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p in self.messages if t.endswith("/events")]

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def wait_event(self, kind: str, timeout: float = 30.0, **match: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [
                e
                for e in self.events()
                if e["event"] == kind and all(e.get(k) == v for k, v in match.items())
            ]
            return bool(found)

        wait_until(seen, timeout, f"event {kind} {match} (events: {self.kinds()})")
        return found[0]

    def status(self) -> dict[str, Any]:
        with self._lock:
            return next(json.loads(p) for t, p in reversed(self.messages) if t.endswith("/status"))

    def put(self, topic: str, payload: bytes, retain: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def command(self, cmd: dict[str, Any] | bytes) -> None:
        raw = cmd if isinstance(cmd, bytes) else json.dumps(cmd).encode()
        self.put(f"{PREFIX}/devices/{DEVICE}/cmd", raw, retain=False)

    def chunks(
        self, blob: Blob, parts: list[bytes], only: Iterator[int] | list[int] | range | None = None
    ) -> None:
        for i in range(blob.chunks) if only is None else only:
            self.put(TOPICS.chunk(blob.sha256, i), parts[i])
        meta = {"sha256": blob.sha256, "size": blob.size, "chunks": blob.chunks, "channel": CHANNEL}
        self.put(TOPICS.blob_meta(blob.sha256), json.dumps(meta).encode())

    def release(self, manifest: Manifest, blob: Blob, announce: bool = False) -> None:
        """The retained release; announce: the same release, not retained, on the channel's
        announce topic (what `edgegap publish` sends before the chunks)."""
        published = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        release = Release(channel=CHANNEL, manifest=manifest, blob=blob, published=published)
        if announce:
            self.put(TOPICS.announce(CHANNEL), release.to_bytes(), retain=False)
        else:
            self.put(TOPICS.release(CHANNEL), release.to_bytes())

    def publish(
        self,
        bundle: Bundle,
        chunk_size: int = CHUNK,
        only: list[int] | range | None = None,
        manifest: Manifest | None = None,
    ) -> Blob:
        """What `edgegap publish` does: chunks and meta first, then the release (all retained)."""
        blob, parts = cut(bundle.model_bytes(), chunk_size)
        self.chunks(blob, parts, only)
        self.release(manifest or bundle.manifest, blob)
        return blob

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def agent_config(broker: Broker, tmp: Path, **overrides: Any) -> dict[str, Any]:
    """Config keys for an agent following CHANNEL, serving a looping video in lockstep (every
    frame read is inferred, none dropped, so a frame lost to an update shows however fast or
    busy the machine is)."""
    video = tmp / "clip.avi"
    if not video.exists():
        write_video(video, 24)
    keys = {
        "bundle.path": str(cached_bundle("yolo").path),
        "source.uri": str(video), "source.loop": True, "source.rate": "all",
        "mqtt.broker": broker.url, "device_id": DEVICE, "fleet": "test",
        "outputs.jsonl": str(tmp / "out.jsonl"),
        "updates.channel": CHANNEL, "updates.state_dir": str(tmp / "state"),
        "updates.probation_frames": 5, "updates.probation_s": 0.2,
        "updates.chunk_timeout_s": 2.0, "updates.max_retries": 2,
        "metrics.enabled": False,
    }  # fmt: skip
    keys.update(overrides)
    return keys


@contextmanager
def running_agent(keys: dict[str, Any]) -> Iterator[Agent]:
    """An Agent serving in a thread; stopped (and checked to have stopped) on exit."""
    agent = Agent(load_config(None, keys))
    agent.start()
    thread = threading.Thread(target=agent.run, name="test-agent")
    thread.start()
    try:
        yield agent
    finally:
        agent.request_stop()
        thread.join(30)
        assert not thread.is_alive(), "agent did not stop"


def results(jsonl: Path) -> list[dict[str, Any]]:
    """The agent's complete JSONL lines: one it is still writing (no newline yet) is left out."""
    complete = jsonl.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def served_version(agent: Agent) -> int:
    assert agent.pipeline is not None
    return agent.pipeline.served.manifest.version


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
