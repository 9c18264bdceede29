"""A real signed bundle for the publish, fleet and gc tests: one conversion per test session,
then re-signed copies of it at other versions (as `edgegap convert --version` would make)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.bundle.loading import MODEL_FILE, read_manifest, write_bundle
from agent.bundle.signing import generate_keypair, load_private_key, sign_manifest


@cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="edgegap-publish-kit-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@cache
def converted() -> Path:
    """A tiny classifier converted by the real pipeline and signed; version 1."""
    from keras_models import pattern_data, trained_classifier

    from converter.data import Dataset
    from converter.pipeline import ConvertOptions, convert
    from firmware_profiles import load_profile

    root = _root()
    generate_keypair(root / "keys")
    x, y = pattern_data(100, seed=4, classes=3)
    convert(
        ConvertOptions(
            model=trained_classifier(x[:60], y[:60]),
            profile=load_profile("x86-avx2"),
            calibration=Dataset(x[:60] / 255.0),
            validation=Dataset(x[60:].astype(np.float32) / 255.0),
            output=root / "v1",
            name="tiny",
            version=1,
            labels=["r", "g", "b"],
            sign_key=root / "keys" / "edgegap.key",
            latency_runs=5,
        )
    )
    return root / "v1"


def private_key() -> Path:
    converted()
    return _root() / "keys" / "edgegap.key"


def public_key() -> Path:
    converted()
    return _root() / "keys" / "edgegap.pub"


def bundle(out: Path, version: int, signed: bool = True, model: bytes | None = None) -> Path:
    """A copy of the converted bundle at another version (a new model file if given), re-signed."""
    import hashlib

    base = converted()
    data = model if model is not None else (base / MODEL_FILE).read_bytes()
    manifest = read_manifest(base).model_copy(update={"version": version, "signature": None})
    manifest = manifest.model_copy(
        update={
            "model": manifest.model.model_copy(
                update={"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            )
        }
    )
    if signed:
        manifest = sign_manifest(manifest, load_private_key(private_key()))
    write_bundle(out, data, manifest)
    return out


def retained(host: str, port: int, topic_filter: str, wait: float = 1.0) -> dict[str, bytes]:
    """Every retained message on topic_filter, read by a plain paho subscriber (a late joiner)."""
    import threading
    import time

    got: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        if msg.retain and paho.topic_matches_sub(topic_filter, msg.topic):
            with lock:
                got[msg.topic] = bytes(msg.payload)

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    client.subscribe(topic_filter, qos=1)
    time.sleep(wait)
    client.disconnect()
    client.loop_stop()
    with lock:
        return {t: p for t, p in got.items() if p}


def publish_raw(
    host: str,
    port: int,
    topic: str,
    payload: bytes,
    username: str | None = None,
    password: str | None = None,
) -> None:
    """One retained QoS 1 message from a plain paho client."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if username:
        client.username_pw_set(username, password)
    client.connect(host, port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
