"""Helpers for benchmarks/update.py: real bundles made by the converter, a mosquitto on a free
loopback port, agent processes, a watcher of their events, /proc readings.

Only `build` (run as `python benchmarks/update_kit.py build DIR quick|full`, in its own process)
imports TensorFlow; the benchmark itself and every agent stay TF-free.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.bundle.loading import MODEL_FILE, read_manifest, write_bundle  # noqa: E402
from agent.bundle.signing import load_private_key, sign_manifest  # noqa: E402

FLEET = "bench"
PREFIX = f"edgegap/{FLEET}"
INPUT = 64  # every model takes 64x64 RGB, so any of them can replace any other
# name -> (stem channels C, width W, 1x1 layers N): about 16*C*W + N*W*W int8 weights
MODELS = {
    "full": {"small": (16, 64, 1), "4MB": (128, 1024, 2), "30MB": (256, 2560, 3)},
    "quick": {"small": (16, 64, 1), "4MB": (32, 256, 1), "30MB": (64, 512, 2)},
}


# ---- bundles (conversion runs in a child process: it imports TensorFlow) ---------------------
def keras_model(c: int, w: int, n: int, seed: int) -> Any:
    """A wide conv net: strided 3x3 convs down to 4x4, a 4x4 conv to 1x1xW, N 1x1 convs WxW,
    softmax over 4 classes. Nearly all weights sit where the map is 1x1, so it invokes fast."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((INPUT, INPUT, 3), name="image")
    x = inp
    for filters in (16, 32, 64, c):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(w, 4, activation="relu")(x)
    for _ in range(n):
        x = keras.layers.Conv2D(w, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name=f"wide_{c}_{w}_{n}")


def build(out: Path, mode: str) -> None:
    """Convert each model of MODELS[mode] with the converter's Python API (--force: the gates
    never block), signed with a key generated here; out/<name>/ is version 1 of each."""
    import numpy as np

    from agent.bundle.signing import generate_keypair
    from converter.data import Dataset
    from converter.pipeline import ConvertOptions, convert
    from firmware_profiles import load_profile

    out.mkdir(parents=True, exist_ok=True)
    generate_keypair(out / "keys")
    rng = np.random.default_rng(0)
    calibration = Dataset(rng.random((16, INPUT, INPUT, 3), dtype=np.float32))
    for seed, (name, (c, w, n)) in enumerate(MODELS[mode].items()):
        convert(
            ConvertOptions(
                model=keras_model(c, w, n, seed),
                profile=load_profile("x86-avx2"),
                calibration=calibration,
                output=out / name,
                name=f"bench-{name}",
                version=1,
                labels=["a", "b", "c", "d"],
                sign_key=out / "keys" / "edgegap.key",
                force=True,
                fallback=False,
                calibration_samples=16,
                latency_runs=5,
            )
        )
    (out / "done").write_text(json.dumps(MODELS[mode]))


def bundles(cache: Path, mode: str) -> Path:
    """The converted bundles for mode, built once into cache/<mode>/ by a child process."""
    root = cache / mode
    if (root / "done").is_file() and json.loads((root / "done").read_text()) == {
        k: list(v) for k, v in MODELS[mode].items()
    }:
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"converting the benchmark models into {root} (once; TensorFlow runs in a child) ...")
    subprocess.run(
        [sys.executable, __file__, "build", str(root), mode], check=True, env=_env(), cwd=ROOT
    )
    return root


def versioned(base: Path, version: int, key: Path, out: Path) -> Path:
    """A copy of the bundle at base as another version, re-signed (as convert --version would)."""
    manifest = read_manifest(base).model_copy(update={"version": version, "signature": None})
    manifest = sign_manifest(manifest, load_private_key(key))
    write_bundle(out, (base / MODEL_FILE).read_bytes(), manifest)
    return out


def swap_figures(rows: list[dict[str, Any]], start: float, end: float) -> dict[str, float]:
    """Frames lost and the longest gap between results from start to end (wall clock)."""
    rows = sorted(rows, key=lambda r: r["frame"]["index"])
    before = [r["sent"] for r in rows if start - 1.0 <= r["sent"] < start]
    usual = statistics.median(b - a for a, b in pairwise(before))
    first = next(i for i, r in enumerate(rows) if r["sent"] >= start)
    window = [r for r in rows[max(0, first - 1) :] if r["sent"] <= end]
    idx = [r["frame"]["index"] for r in window]
    sent = [r["sent"] for r in window]
    old = [r["frame"]["index"] for r in window if r["model"]["version"] == 1]
    new = [r["frame"]["index"] for r in window if r["model"]["version"] != 1]
    return {
        "lost": sum(b - a - 1 for a, b in pairwise(idx)),
        "lost_at_swap": min(new) - max(old) - 1 if old and new else -1,
        "stall_s": max(b - a for a, b in pairwise(sent)) - usual,
        "usual_s": usual,
    }


# ---- the broker --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """mosquitto on 127.0.0.1:<free port>, anonymous, no persistence, $SYS every second."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "sys_interval 1\nmax_inflight_messages 0\nmax_queued_messages 0\n"
        )
        self.process = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def cpu_s(self) -> float:
        return cpu_s(self.process.pid)


def client(url: str, name: str) -> paho.Client:
    host, _, port = url.split("://", 1)[1].rpartition(":")
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{name}-{os.getpid()}")
    c.max_inflight_messages_set(64)
    c.connect(host, int(port), keepalive=60)
    c.loop_start()
    return c


def cpu_s(pid: int) -> float:
    """CPU seconds process pid has used, its waited-for children's (the weight cache's) included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def raw_transfer(url: str, payload: bytes, topic: str, timeout: float) -> float:
    """Seconds one raw QoS 1 message of payload takes from a publish to a subscriber's receipt."""
    got, subscribed = threading.Event(), threading.Event()
    name = topic.replace("/", "-")
    sub = client(url, f"raw-sub-{name}")
    sub.on_message = lambda c, u, m: got.set()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe(topic, qos=1)
    pub = client(url, f"raw-pub-{name}")
    try:
        subscribed.wait(10)
        time.sleep(0.1)
        t0 = time.perf_counter()
        info = pub.publish(topic, payload, qos=1)
        if not got.wait(timeout):
            raise RuntimeError("the raw message did not arrive")
        seconds = time.perf_counter() - t0
        info.wait_for_publish(30)
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
    return seconds


# ---- agents ------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class AgentProc:
    device: str
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"agent {self.device} has no VmRSS (exited?)")

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def imports_tensorflow(self) -> bool:
        return "site-packages/tensorflow/" in Path(f"/proc/{self.pid}/maps").read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def spawn_agent(
    broker: str,
    device: str,
    channel: str,
    bundle: Path,
    key: Path,
    workdir: Path,
    source: str,
    jsonl: bool = False,
    updates: dict[str, Any] | None = None,
) -> AgentProc:
    """`python -m agent run` following channel, in its own process, logging to workdir/agent.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "agent.yaml"
    settings = {"probation_frames": 5, "probation_s": 0.2, "latency_factor": 50.0}
    config.write_text(json.dumps({"updates": settings | (updates or {})}))  # JSON is YAML
    args = [
        sys.executable, "-m", "agent", "run", "--config", str(config), "--bundle", str(bundle),
        "--trusted-key", str(key), "--source", source, "--broker", broker, "--fleet", FLEET,
        "--device-id", device, "--channel", channel, "--state-dir", str(workdir / "state"),
        "--threads", "1",
    ]  # fmt: skip
    if jsonl:
        args += ["--jsonl", str(workdir / "out.jsonl")]
    log = (workdir / "agent.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    log.close()
    return AgentProc(device, proc, workdir)


def results(agent: AgentProc) -> list[dict[str, Any]]:
    path = agent.workdir / "out.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- watching the fleet --------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    at: float  # time.perf_counter() on arrival
    wall: float  # time.time() on arrival
    device: str
    body: dict[str, Any]


class Watcher:
    """Records every event and status message of the fleet, and the broker's $SYS inflight count."""

    def __init__(self, url: str) -> None:
        self.events: list[Seen] = []
        self.status: dict[str, dict[str, Any]] = {}
        self.inflight: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self.client = client(url, "watcher")
        self.client.on_message = self._on_message
        for topic in (f"{PREFIX}/devices/+/events", f"{PREFIX}/devices/+/status"):
            self.client.subscribe(topic, qos=1)
        self.client.subscribe("$SYS/broker/messages/inflight", qos=0)
        self.client.subscribe("$SYS/broker/store/messages/count", qos=0)

    def _on_message(self, c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        now, wall = time.perf_counter(), time.time()
        if msg.topic.startswith("$SYS/broker/messages/inflight"):
            with self._lock:
                self.inflight.append((now, int(msg.payload or b"0")))
            return
        if msg.topic.startswith("$SYS") or not msg.payload:
            return
        device = msg.topic.split("/")[-2]
        body = json.loads(msg.payload)
        with self._lock:
            if msg.topic.endswith("/status"):
                self.status[device] = body
            else:
                self.events.append(Seen(now, wall, device, body))

    def find(self, kind: str, device: str | None = None, after: float = 0.0) -> list[Seen]:
        with self._lock:
            return [
                e
                for e in self.events
                if e.body.get("event") == kind
                and (device is None or e.device == device)
                and e.at >= after
            ]

    def phases(self, device: str, since: float, kinds: tuple[str, ...]) -> dict[str, float]:
        """Seconds from since to device's first event of each kind (as `<kind>_s`)."""
        return {f"{k}_s": self.find(k, device, since)[0].at - since for k in kinds}

    def online(self, device: str) -> bool:
        with self._lock:
            s = self.status.get(device, {})
        return s.get("state") == "online" and s.get("health") == "ok"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.005)


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgegap-bench-update-"))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "build":
        build(Path(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: python benchmarks/update_kit.py build DIR quick|full")
