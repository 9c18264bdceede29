"""`edgegap rollout watch|status`: promote a canary version to stable, or halt it; show where a
channel's rollout stands (docs/protocol.md, "Staged rollout")."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from rich.table import Table

from agent.updates.protocol import STAGES
from converter.broker_client import Connection
from converter.commands.mqtt_options import broker_options, resolve
from converter.console import console
from converter.fleet import read_statuses
from converter.publishing import check_channel, current_release
from converter.rollout import Bounds, RolloutRecord, RolloutState, read_record, watch_rollout
from converter.rollout.bounds import Sample

logger = logging.getLogger(__name__)

RATIO = click.FloatRange(min=0, min_open=True)


def _bounds_options(func: Any) -> Any:
    options = [
        click.option("--window", type=click.FloatRange(min=0), default=60.0, show_default=True,
                     help="Seconds each canary must stay in bounds after passing probation."),
        click.option("--min-fps-ratio", type=RATIO, default=0.8, show_default=True,
                     help="Canary fps must be at least this times its fps before."),
        click.option("--max-latency-ratio", type=RATIO, default=1.5, show_default=True,
                     help="Canary latency p50 at most this times its p50 before."),
        click.option("--max-p99-ratio", type=RATIO, default=2.0, show_default=True,
                     help="Canary latency p99 at most this times its p99 before."),
        click.option("--max-score-drop", type=click.FloatRange(min=0), default=0.1,
                     show_default=True, help="Largest fall of top_score_mean and top_score_p10."),
        click.option("--max-detections-change", type=click.FloatRange(min=0), default=0.5,
                     show_default=True, help="Largest relative change of detections per frame."),
        click.option("--scores", type=click.Choice(["require", "skip"]), default="require",
                     show_default=True, help="require: a canary without drift statistics is "
                     "never promoted; skip: promote on health, fps and latency alone."),
        click.option("--min-frames", type=click.IntRange(min=1), default=30, show_default=True,
                     help="Drift statistics over fewer frames do not count."),
        click.option("--min-canaries", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Canary devices that must be counted before promoting."),
        click.option("--max-wait", type=click.FloatRange(min=1), default=600.0,
                     show_default=True, help="Halt a rollout not promoted after this long (s)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@click.group("rollout")
def rollout() -> None:
    """Staged rollout: canary devices take a version first; it reaches stable when they pass.

    \b
    Examples:
      edgegap publish bundle/ --stage canary --channel lobby --broker mqtt://broker.lan
      edgegap rollout watch --channel lobby --broker mqtt://broker.lan --window 120
      edgegap rollout status --channel lobby --broker mqtt://broker.lan
    """


@rollout.command("watch")
@click.option("--channel", required=True, help="The channel whose rollout to drive.")
@broker_options
@_bounds_options
def watch(channel: str, max_wait: float, **kwargs: Any) -> None:
    """Promote the channel's canary version to stable when every canary passed probation and
    stayed in bounds for --window seconds; else halt it and roll the canaries back.

    Bounds compare each canary on the new version with the same device before the rollout
    (or the stable group). Exits 0 when promoted, 1 when halted or superseded. A halted
    rollout is enforced again: a canary back online on the halted version is rolled back.

    \b
    Examples:
      edgegap rollout watch --channel lobby --broker mqtt://broker.lan --fleet warehouse
      edgegap rollout watch --channel lobby --broker mqtt://broker.lan --window 300 \\
          --max-latency-ratio 1.2 --max-score-drop 0.05 --min-canaries 2
      edgegap rollout watch --channel lobby --broker mqtt://broker.lan --scores skip
    """
    check_channel(channel)
    options, topics = resolve(kwargs)
    bounds = Bounds(
        window_s=kwargs["window"], min_fps_ratio=kwargs["min_fps_ratio"],
        max_latency_ratio=kwargs["max_latency_ratio"], max_p99_ratio=kwargs["max_p99_ratio"],
        max_score_drop=kwargs["max_score_drop"],
        max_detections_change=kwargs["max_detections_change"], scores=kwargs["scores"],
        min_frames=kwargs["min_frames"], min_canaries=kwargs["min_canaries"],
    )  # fmt: skip
    if bounds.scores == "skip":
        console.print("[yellow]score bounds skipped (--scores skip)[/]")
    with Connection(options, "rollout") as conn:
        record = watch_rollout(conn, topics, channel, bounds, max_wait, _Progress())
    ok = record.state is RolloutState.PROMOTED
    colour = "green" if ok else "red"
    console.print(
        f"[{colour}]{record.name} v{record.version}: {record.state.value}[/]: {record.reason}"
    )
    if not ok:
        sys.exit(1)


class _Progress:
    """Prints a line when the rollout's or a device's state changes (not every reason)."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, record: RolloutRecord) -> None:
        devices = ", ".join(
            f"{d} {r.state.value}"
            + ("" if r.reason.startswith("in bounds for") else f" ({r.reason})")
            for d, r in record.devices.items()
        )
        line = f"v{record.version} {record.state.value}: {devices}"
        if line != self.last:
            self.last = line
            console.print(line)


@rollout.command("status")
@click.option("--channel", required=True, help="The channel to show.")
@broker_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(channel: str, as_json: bool, **kwargs: Any) -> None:
    """Each stage's release, each device of the channel with its group, version, state and
    reason, and the rollout record (models/<channel>/rollout).

    \b
    Examples:
      edgegap rollout status --channel lobby --broker mqtt://broker.lan --fleet warehouse
      edgegap rollout status --channel lobby --broker mqtt://broker.lan --json
    """
    check_channel(channel)
    options, topics = resolve(kwargs)
    with Connection(options, "rollout") as conn:
        record = read_record(conn, topics, channel)
        releases = {s: current_release(conn, topics, channel, s) for s in STAGES}
        statuses = read_statuses(conn, topics)
    samples = {d: Sample.of(s) for d, s in statuses.items()}
    rows = _rows(channel, record, releases, samples)
    if as_json:
        out = {
            "channel": channel,
            "rollout": record.model_dump(mode="json", by_alias=True) if record else None,
            "rows": rows,
        }
        click.echo(json.dumps(out))
        return
    if record is None:
        console.print(f"channel {channel}: no rollout record")
    else:
        console.print(
            f"rollout of {record.name} v{record.version}: [bold]{record.state.value}[/] "
            f"(last offered to {record.stage}): {record.reason}"
        )
    console.print(_table(channel, rows))


def _rows(
    channel: str,
    record: RolloutRecord | None,
    releases: dict[str, Any],
    samples: dict[str, Sample],
) -> list[dict[str, Any]]:
    """One row per stage (its release), then one per device of the channel, canaries first."""
    rows = []
    for stage in STAGES:
        release = releases.get(stage)
        version = release.manifest.version if release is not None else None
        state, reason = ("offered", "") if release is not None else ("empty", "")
        if record is not None and stage == "canary" and record.state is RolloutState.HALTED:
            state, reason = "halted", f"v{record.version}: {record.reason}"
        elif record is not None and version == record.version:
            state, reason = record.state.value, record.reason
        rows.append(
            {"stage": stage, "device": None, "version": version, "state": state, "reason": reason}
        )
    mine = {d: s for d, s in samples.items() if s.channel == channel}
    for device, s in sorted(
        mine.items(),
        key=lambda kv: (STAGES.index(kv[1].group) if kv[1].group in STAGES else 9, kv[0]),
    ):
        dev = record.devices.get(device) if record is not None else None
        state = dev.state.value if dev is not None else ("online" if s.online else "offline")
        if dev is not None and not s.online:
            state = "offline"
        rows.append({
            "stage": s.group, "device": device, "version": s.version, "state": state,
            "reason": dev.reason if dev is not None else "",
        })  # fmt: skip
    return rows


def _table(channel: str, rows: list[dict[str, Any]]) -> Table:
    t = Table(title=f"rollout of {channel}", title_justify="left")
    for name in ("stage", "device", "version", "state", "reason"):
        t.add_column(name, overflow="fold")
    colours = {"promoted": "green", "in_bounds": "green", "halted": "red", "rolled_back": "red",
               "out_of_bounds": "red", "offline": "red", "watching": "yellow",
               "waiting": "yellow"}  # fmt: skip
    for r in rows:
        state = r["state"]
        colour = colours.get(state)
        t.add_row(
            r["stage"], r["device"] or "[dim](release)[/]",
            f"v{r['version']}" if r["version"] is not None else "-",
            f"[{colour}]{state}[/]" if colour else state, r["reason"] or "",
        )  # fmt: skip
    return t
