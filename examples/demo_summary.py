"""The end of the update loop: the fleet's view, a clean stop, and what the device served.

The summary is measured from the agent's JSONL output (one line per frame served, in order):
`frame.index` counts every frame the source delivered, dropped ones too, so a gap in the
indices is a lost frame; `model.version` says which model served each frame.
"""

from __future__ import annotations

import json
import signal
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo_kit import Demo, DemoError, console, edgegap, heading
from demo_loop import DEVICE_ID, UPDATE_EVENTS, Device, _stop, _tail
from rich.table import Table

AROUND = 15  # frames on each side of the swap whose detections are compared


def step_fleet(demo: Demo) -> None:
    heading("11. The fleet, as the host sees it")
    edgegap("fleet", "status", "--broker", demo.broker, "--fleet", demo.fleet, "--wait", "1")


def step_stop(demo: Demo) -> None:
    """Stop the agent as systemd would (SIGTERM), then summarize what it served."""
    heading("12. Stop the device; what it served across the swap")
    device: Device = demo.device
    code = _stop(device.proc, signal.SIGTERM)
    if code != 0:
        raise DemoError(f"the agent exited with {code} on SIGTERM:\n{_tail(device.log)}")
    agent_lines = [
        line
        for line in device.log.read_text(errors="replace").splitlines()
        if line.startswith(("edgegap-agent:", "fps "))
    ]
    for line in agent_lines:
        console.print(f"[dim]agent:[/] {line}")
    served = measure(read_jsonl(device.jsonl))
    missing = [k for k in UPDATE_EVENTS if k not in device.feed.kinds(2)]
    if missing:
        raise DemoError(f"the device never sent these events for v2: {', '.join(missing)}")
    console.print(summary_table(served, device))
    if served.lost_at_swap or served.after_swap_v1:
        raise DemoError("frames were lost or served by v1 after the swap (see the table)")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DemoError(f"the agent wrote no detections to {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Served:
    frames: int
    by_version: dict[int, int]
    dropped: dict[int, int]  # indices missing (dropped frames) while each version served
    last_v1: int  # frame index of the last frame v1 served
    first_v2: int  # ... and of the first v2 served
    lost_at_swap: int
    swap_gap_ms: float  # between the capture times of those two frames
    after_swap_v1: int  # frames served by v1 after v2 took over (must be none)
    dets_before: float  # mean detections per frame, AROUND frames before the swap
    dets_after: float  # ... and after


def measure(records: list[dict[str, Any]]) -> Served:
    if not records:
        raise DemoError("the agent served no frame")
    index = [int(r["frame"]["index"]) for r in records]
    version = [int(r["model"]["version"]) for r in records]
    if 2 not in version:
        raise DemoError("no frame was served by v2")
    switch = version.index(2)
    if switch == 0:
        raise DemoError("no frame was served by v1")
    dets = [len(r["detections"]) for r in records]
    stamp = [float(r["frame"]["timestamp"]) for r in records]
    return Served(
        frames=len(records),
        by_version={v: version.count(v) for v in sorted(set(version))},
        dropped={v: _dropped(index, version, v) for v in sorted(set(version))},
        last_v1=index[switch - 1],
        first_v2=index[switch],
        lost_at_swap=index[switch] - index[switch - 1] - 1,
        swap_gap_ms=(stamp[switch] - stamp[switch - 1]) * 1000,
        after_swap_v1=sum(1 for v in version[switch:] if v != 2),
        dets_before=statistics.fmean(dets[max(0, switch - AROUND) : switch]),
        dets_after=statistics.fmean(dets[switch : switch + AROUND]),
    )


def _dropped(index: list[int], version: list[int], v: int) -> int:
    """Indices skipped just before a frame that version v served, the swap itself excluded."""
    return sum(
        b - a - 1
        for a, b, va, vb in zip(index, index[1:], version, version[1:], strict=False)
        if va == vb == v
    )


def summary_table(s: Served, device: Device) -> Table:
    t = Table(title="summary", title_justify="left", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("measured")
    versions = ", ".join(f"v{v}: {n}" for v, n in s.by_version.items())
    t.add_row("frames served", f"{s.frames} ({versions})")
    dropped = ", ".join(f"{n} while v{v} served" for v, n in s.dropped.items() if n)
    t.add_row(
        "frame indices",
        f"{dropped} (missing indices: frames dropped, newest frame wins)"
        if dropped
        else "contiguous: no frame dropped",
    )
    lost = "none lost" if not s.lost_at_swap else f"[red]{s.lost_at_swap} lost[/]"
    t.add_row(
        "across the swap",
        f"last v1 frame #{s.last_v1}, first v2 frame #{s.first_v2}: {lost} "
        f"({s.swap_gap_ms:.0f} ms apart at capture)",
    )
    t.add_row(
        "detections per frame",
        f"{s.dets_before:.2f} in the {AROUND} frames before the swap, {s.dets_after:.2f} after",
    )
    start = device.published_at or 0.0
    times = {
        e["event"]: float(e["ts"]) - start
        for e in reversed(device.feed.events)
        if e.get("version") == 2 and "ts" in e
    }
    for kind in ("verified", "activated", "probation_passed"):
        if kind in times:
            t.add_row(f"publish start → {kind}", f"{times[kind]:.2f} s")
    t.add_row("device", f"{DEVICE_ID}, outputs in {device.folder}")
    return t
