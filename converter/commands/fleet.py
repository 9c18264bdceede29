"""`edgegap fleet status|events` and `edgegap gc`: look at devices, clear unused blobs."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

import click
from rich.table import Table

from converter.broker_client import Connection
from converter.commands.mqtt_options import broker_options, resolve
from converter.console import console, human_bytes
from converter.fleet import (
    DeviceRow,
    EventLog,
    clear_messages,
    device_rows,
    plan_gc,
    read_blob_metas,
    read_releases,
    read_stage_releases,
    read_statuses,
    watch_events,
)
from converter.publishing import check_channel, send_all

logger = logging.getLogger(__name__)

WAIT = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds to collect live events before printing.",
)


@click.group("fleet")
def fleet() -> None:
    """Look at the devices of a fleet through the broker.

    \b
    Examples:
      edgegap fleet status --broker mqtt://broker.lan --fleet warehouse
      edgegap fleet events --broker mqtt://broker.lan --fleet warehouse --follow
    """


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or value == "":
        return "-"
    return f"{value:.1f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _table(rows: list[DeviceRow]) -> Table:
    t = Table(title="devices", title_justify="left")
    for name in (
        "device",
        "state",
        "model",
        "channel",
        "health",
        "fps",
        "p50",
        "p99",
        "last event",
    ):
        t.add_column(name, overflow="fold")
    for r in rows:
        state = {"online": "[green]online[/]", "offline": "[red]offline[/]"}.get(r.state, r.state)
        model = f"{r.model} v{r.version}" if r.model else "-"
        t.add_row(
            r.device_id, state, model, _fmt(r.channel), _fmt(r.health), _fmt(r.fps),
            _fmt(r.p50_ms, " ms"), _fmt(r.p99_ms, " ms"), _fmt(r.last_event),
        )  # fmt: skip
    return t


@fleet.command("status")
@broker_options
@WAIT
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
def status(wait: float, as_json: bool, **kwargs: Any) -> None:
    """Each device's retained status: state, model, channel, health, fps, latency, last event.

    The last event is the newest one seen on devices/+/events during --wait seconds.
    """
    options, topics = resolve(kwargs)
    log = EventLog()
    with Connection(options, "fleet") as conn:
        watch_events(conn, topics, log)
        statuses = read_statuses(conn, topics)
        releases = read_releases(conn, topics)
        time.sleep(wait)
    rows = device_rows(statuses, releases, log.last_by_device())
    if as_json:
        for r in rows:
            click.echo(json.dumps(r.as_json()))
        return
    if not rows:
        console.print(f"no device has reported under {topics.prefix}")
        return
    console.print(_table(rows))


@fleet.command("events")
@broker_options
@WAIT
@click.option("--follow", is_flag=True, help="Print events as they come, until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as its JSON.")
def events(wait: float, follow: bool, as_json: bool, **kwargs: Any) -> None:
    """Update events from devices/+/events (they are not retained: only live ones are seen)."""
    options, topics = resolve(kwargs)

    def show(e: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(e))
            return
        extra = {k: v for k, v in e.items() if k not in ("schema", "event", "device_id", "ts")}
        console.print(
            f"{e.get('device_id')}  {e.get('event')}  {json.dumps(extra) if extra else ''}"
        )

    log = EventLog()
    with Connection(options, "events") as conn:
        watch_events(conn, topics, log, show if follow else None)
        with contextlib.suppress(KeyboardInterrupt):
            _forever() if follow else time.sleep(wait)
    if not follow:
        for e in log.events:
            show(e)


def _forever() -> None:
    while True:
        time.sleep(1)


@click.command("gc")
@click.option("--channel", required=True, help="Clear blobs published to this channel.")
@broker_options
@click.option("--dry-run", is_flag=True, help="List what would be cleared, clear nothing.")
def gc(channel: str, dry_run: bool, **kwargs: Any) -> None:
    """Clear the retained chunks and meta of CHANNEL's blobs that nothing uses any more.

    A blob is kept while a channel's current release (of any rollout stage) names it or a
    device's retained status
    names its sha256 (the model it serves, or the one it would roll back to). Do not run it
    while a publish to the channel is under way: that publish's blob is not released yet.

    \b
    Examples:
      edgegap gc --channel lobby-cam --broker mqtt://broker.lan --fleet warehouse --dry-run
      edgegap gc --channel lobby-cam --broker mqtt://broker.lan --fleet warehouse
    """
    check_channel(channel)
    options, topics = resolve(kwargs)
    with Connection(options, "gc") as conn:
        metas = read_blob_metas(conn, topics)
        releases = {**read_releases(conn, topics), **read_stage_releases(conn, topics)}
        plan = plan_gc(metas, releases, read_statuses(conn, topics), channel)
        t = Table(title=f"blobs of {channel}", title_justify="left")
        for name in ("sha256", "size", "chunks", "action"):
            t.add_column(name)
        for meta, why in plan.keep:
            t.add_row(
                meta.sha256[:16] + "…", human_bytes(meta.size), str(meta.chunks), f"keep: {why}"
            )
        verb = "would clear" if dry_run else "clear"
        for meta in plan.clear:
            t.add_row(meta.sha256[:16] + "…", human_bytes(meta.size), str(meta.chunks), verb)
        console.print(t)
        if dry_run:
            return
        for meta in plan.clear:
            send_all(conn, clear_messages(topics, meta))
    freed = sum(m.size for m in plan.clear)
    console.print(f"cleared {len(plan.clear)} blobs ({human_bytes(freed)}), kept {len(plan.keep)}")
