"""The update loop of `make demo`: a broker, a device serving v1, a refreshed v2 published over
MQTT and swapped in live, the fleet's view of it, and what the device served across the swap.

The device is a real `edgegap-agent` process (`python -m agent run`); the host side runs the
`edgegap` commands a user would type (`broker`, `publish`, `fleet status`).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo_kit import ROOT, Demo, DemoError, console, edgegap, heading

CHANNEL = "demo"
DEVICE_ID = "demo-cam"
FAILED = ("rejected", "rolled_back")
UPDATE_EVENTS = (
    "available",
    "downloading",
    "verified",
    "activating",
    "activated",
    "probation_passed",
)
VIDEO_FPS = 15.0
# The agent's defaults are 30 frames and 10 s of probation; the demo waits through two of them.
AGENT_YAML = """\
# The demo device's config; the command line gives the rest (flags win over this file).
updates:
  probation_s: 3          # default 10: each new model is watched this long before it is 'good'
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    """The subprocesses run this checkout's code, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal a process we started and wait for it; kill it if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


# ---- 7. the broker ----------------------------------------------------------------------------
def step_broker(demo: Demo) -> None:
    """Start `edgegap broker` on a free loopback port, unless --broker named one."""
    if demo.broker is not None:
        heading("7. The MQTT broker (yours)")
        demo.fleet = f"demo-{int(time.time())}"  # a fleet of its own: no release left from before
        console.print(f"using {demo.broker}; topics under edgegap/{demo.fleet}")
        return
    heading("7. An MQTT broker: edgegap broker (embedded, 127.0.0.1)")
    port = _free_port()
    log = demo.out / "broker.log"
    console.print(f"[dim]$ edgegap broker --port {port}[/]  (log: {log})")
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "converter", "broker", "--port", str(port)],
            stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=demo.out,
        )  # fmt: skip
    demo.cleanup.callback(_stop, proc, signal.SIGTERM, 10)  # SIGINT may be ignored (a &-job)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise DemoError(f"the broker exited with {proc.returncode}:\n{_tail(log)}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline:
            raise DemoError(f"the broker did not listen on port {port} within 30 s:\n{_tail(log)}")
        time.sleep(0.2)
    demo.broker = f"mqtt://127.0.0.1:{port}"
    console.print(f"broker listening on {demo.broker}")


# ---- the device's events, as they come -------------------------------------------------------
@dataclass
class EventFeed:
    """Update events from devices/+/events, printed as they arrive; steps wait on them."""

    origin: float = field(default_factory=time.time)  # times are printed relative to this
    events: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_event(self, e: dict[str, Any]) -> None:
        with self.cond:  # printed before a waiting step goes on, so lines stay in order
            console.print(
                f"  [dim]{float(e.get('ts', 0)) - self.origin:+7.2f} s[/]  {_describe(e)}"
            )
            self.events.append(e)
            self.cond.notify_all()

    def wait_for(
        self, kind: str, version: int, timeout: float, check: Callable[[], None]
    ) -> dict[str, Any]:
        """The first `kind` event of `version`; DemoError on a rejected or rolled_back event of
        it, on a timeout, or when check() raises (the agent exited)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if e.get("version") != version:
                        continue
                    if e.get("event") == kind:
                        return e
                    if e.get("event") in FAILED:
                        raise DemoError(f"the device {e['event']} v{version}: {e.get('reason')}")
                check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoError(f"no `{kind}` event for v{version} within {timeout:g} s")
                self.cond.wait(min(left, 0.5))

    def kinds(self, version: int) -> list[str]:
        with self.cond:
            return [str(e.get("event")) for e in self.events if e.get("version") == version]


def _describe(e: dict[str, Any]) -> str:
    text = f"{e.get('device_id')}  [bold]{e.get('event')}[/] v{e.get('version')}"
    progress = e.get("progress")
    if isinstance(progress, dict):
        text += f"  {progress.get('chunks')}/{progress.get('of')} chunks"
    if e.get("previous") is not None:
        text += f"  (was v{e['previous']})"
    if e.get("channel"):
        text += f"  on channel {e['channel']}"
    if e.get("reason"):
        text += f"  [red]{e['reason']}[/]"
    return text


def watch_events(demo: Demo) -> EventFeed:
    """Subscribe to the fleet's events for the rest of the demo (what `edgegap fleet events
    --follow` prints)."""
    from converter.broker_client import BrokerOptions, Connection
    from converter.fleet import EventLog
    from converter.fleet import watch_events as subscribe
    from converter.publishing import Topics

    assert demo.broker is not None
    feed = EventFeed()
    conn = Connection(BrokerOptions(url=demo.broker), "demo")
    try:
        conn.connect()
    except Exception as exc:
        raise DemoError(f"cannot reach the broker {demo.broker}: {exc}") from exc
    demo.cleanup.callback(conn.close)
    subscribe(conn, Topics(f"edgegap/{demo.fleet}"), EventLog(), feed.on_event)
    return feed


# ---- 8. the device ----------------------------------------------------------------------------
@dataclass
class Device:
    """The agent process and what it writes."""

    proc: subprocess.Popen[bytes]
    folder: Path
    feed: EventFeed
    published_at: float | None = None  # when `edgegap publish` of v2 started (wall clock)

    @property
    def log(self) -> Path:
        return self.folder / "agent.log"

    @property
    def jsonl(self) -> Path:
        return self.folder / "detections.jsonl"

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise DemoError(f"the agent exited with {self.proc.returncode}:\n{_tail(self.log)}")


def render_video(test: Path, path: Path, size: tuple[int, int] = (480, 480)) -> Path:
    """Write the test images as an MJPG video, scaled up to a camera-like frame size."""
    import cv2

    from converter.tasks.detection_folder import read_folder

    folder = read_folder(test)
    fourcc = cv2.VideoWriter_fourcc(*"MJPG")  # type: ignore[attr-defined]
    writer = cv2.VideoWriter(str(path), fourcc, VIDEO_FPS, size)
    for i in range(len(folder)):
        frame = cv2.resize(folder.image(i), size, interpolation=cv2.INTER_LINEAR)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def agent_args(demo: Demo, video: Path, folder: Path) -> list[str]:
    assert demo.broker is not None
    return [
        "run", "--config", str(folder / "agent.yaml"),
        "--bundle", str(demo.detector_bundles["x86-avx2"]),
        "--trusted-key", str(demo.files["public_key"]),
        "--source", str(video), "--loop", "--rate", "native",
        "--broker", demo.broker, "--fleet", demo.fleet, "--device-id", DEVICE_ID,
        "--channel", CHANNEL, "--state-dir", str(folder / "state"),
        "--jsonl", str(folder / "detections.jsonl"),
        "--annotate-dir", str(folder / "annotated"), "--annotate-every", "30",
    ]  # fmt: skip


def step_device(demo: Demo) -> None:
    """Start the agent on the detector bundle (v1), following the channel; wait until v1 has
    passed its probation."""
    import shutil

    heading(f"8. A device: edgegap-agent serves detector v1 and follows channel {CHANNEL!r}")
    folder = demo.out / "device"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh device: empty store, empty outputs
    folder.mkdir(parents=True)
    video = render_video(demo.files["detection_test"], folder / "camera.avi")
    (folder / "agent.yaml").write_text(AGENT_YAML)
    console.print(
        f"camera: {video}, {VIDEO_FPS:g} fps, looped; the agent's log: {folder / 'agent.log'}"
    )
    feed = watch_events(demo)
    args = agent_args(demo, video, folder)
    console.print(f"[dim]$ edgegap-agent {shlex.join(args)}[/]")
    with (folder / "agent.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *args],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=demo.out,
        )  # fmt: skip
    demo.cleanup.callback(_stop, proc)
    demo.device = device = Device(proc, folder, feed)
    feed.wait_for("probation_passed", 1, 90, device.check)
    console.print(f"[green]{DEVICE_ID} serves detector v1[/] (it passed probation)")


# ---- 10. publish v2, watch the swap ------------------------------------------------------------
def step_publish(demo: Demo) -> None:
    """`edgegap publish` the refreshed bundle; the device pulls, verifies and swaps it in."""
    heading(f"10. Publish v2 to channel {CHANNEL!r}; the device swaps it in live")
    device: Device = demo.device
    assert demo.refreshed is not None and demo.broker is not None
    start = time.time()
    device.feed.origin = start
    edgegap(
        "publish", demo.refreshed, "--broker", demo.broker, "--fleet", demo.fleet,
        "--channel", CHANNEL, "--key", demo.files["public_key"],
    )  # fmt: skip
    activated = device.feed.wait_for("activated", 2, 120, device.check)
    passed = device.feed.wait_for("probation_passed", 2, 90, device.check)
    device.published_at = start
    console.print(
        f"[green]{DEVICE_ID} serves v2[/]: activated {float(activated['ts']) - start:.2f} s "
        f"after the publish started; probation passed after {float(passed['ts']) - start:.2f} s"
    )
