"""The pieces of benchmarks/refresh.py that are not the refresh itself: a real mosquitto, a
device (`python -m agent run`) serving a domain-b video, and the fleet's events."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CANARY, STABLE = "cam-canary", "cam-stable"
# the canary captures: a random half of its frames, at the policy's highest rate
AGENT_YAML = """\
updates:
  probation_s: 3
  group: {group}
capture:
  enabled: {capture}
  policy: {{band: [0.3, 0.6], flicker: true, sample_rate: 0.5, max_per_minute: 600,
            max_bytes_per_day: 1000000000}}
  drift_window_s: 8
"""


class BenchError(RuntimeError):
    pass


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_mosquitto(work: Path, stack: ExitStack) -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (work / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    stack.callback(_stop, proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return f"mqtt://127.0.0.1:{port}"
        time.sleep(0.1)
    raise BenchError("mosquitto did not start")


@dataclass
class Events:
    """The fleet's update events as they arrive."""

    events: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, e: dict[str, Any]) -> None:
        with self.cond:
            self.events.append(e)
            self.cond.notify_all()

    def wait(
        self, kind: str, version: int, timeout: float, alive: Any, device: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if e.get("version") != version or e.get("device_id") != device:
                        continue
                    if e.get("event") == kind:
                        return e
                    if e.get("event") in ("rejected", "rolled_back"):
                        raise BenchError(f"{device} {e['event']} v{version}: {e.get('reason')}")
                alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"no {kind} event for v{version} in {timeout:g} s")
                self.cond.wait(0.5)

    def seen(self, version: int, device: str) -> list[str]:
        with self.cond:
            return [str(e.get("event")) for e in self.events
                    if e.get("version") == version and e.get("device_id") == device]  # fmt: skip


def follow_events(url: str, fleet: str, stack: ExitStack) -> Events:
    from agent.updates.protocol import Topics
    from converter.broker_client import BrokerOptions, Connection
    from converter.fleet import EventLog, watch_events

    events = Events()
    conn = Connection(BrokerOptions(url=url), "bench")
    conn.connect()
    stack.callback(conn.close)
    watch_events(conn, Topics.for_fleet(fleet, None), EventLog(), lambda e: events.add(e))
    return events


def write_video(folder: Path, path: Path, fps: float = 15.0) -> Path:
    import cv2

    from converter.tasks.detection_folder import read_folder

    data = read_folder(folder)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (480, 480))  # type: ignore[attr-defined]
    for i in range(len(data)):
        frame = cv2.resize(data.image(i), (480, 480), interpolation=cv2.INTER_LINEAR)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@dataclass
class Device:
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])
            raise BenchError(f"the agent exited with {self.proc.returncode}:\n{tail}")


def start_device(
    work: Path, device_id: str, bundle: Path, video: Path, url: str, fleet: str, channel: str,
    key: Path, stack: ExitStack,
) -> Device:  # fmt: skip
    """An agent on the video, in the canary group (capturing) or the stable group."""
    canary = device_id == CANARY
    folder = work / device_id
    folder.mkdir(parents=True, exist_ok=True)
    config = AGENT_YAML.format(group="canary" if canary else "stable", capture=str(canary).lower())
    (folder / "agent.yaml").write_text(config)
    args = [
        "run", "--config", str(folder / "agent.yaml"), "--bundle", str(bundle),
        "--trusted-key", str(key), "--source", str(video), "--loop", "--rate", "native",
        "--broker", url, "--fleet", fleet, "--device-id", device_id, "--channel", channel,
        "--state-dir", str(folder / "state"), "--jsonl", str(folder / "detections.jsonl"),
    ]  # fmt: skip
    log = folder / "agent.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "agent", *args], stdout=f,
                                stderr=subprocess.STDOUT, env=_env())  # fmt: skip
    stack.callback(_stop, proc)
    return Device(proc, log)


def collect(url: str, fleet: str, out: Path, until: int, timeout: float) -> float:
    """`edgegap collect --until N`; returns the time the first stored capture was taken."""
    import json

    cmd = [sys.executable, "-m", "converter", "collect", "--broker", url, "--fleet", fleet,
           "--out", str(out), "--until", str(until), "--duration", str(timeout)]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    if done.returncode:
        raise BenchError(f"collect failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    images = json.loads((out / "annotations.json").read_text())["images"]
    return min(float(im["provenance"]["ts"]) for im in images)
