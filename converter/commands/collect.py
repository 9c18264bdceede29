"""`edgegap collect`: store the captures a fleet's devices send as a dataset folder."""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path
from typing import Any

import click

from agent.capture.message import CaptureError
from agent.updates.protocol import NAME
from converter.broker_client import Connection
from converter.captures import Assembler, CaptureStore
from converter.commands.mqtt_options import broker_options, resolve
from converter.console import console, progress

logger = logging.getLogger(__name__)

REPORT_S = 5.0  # without a terminal, a progress line this often
# Messages received and not yet stored; more are dropped (paho's thread never waits).
MAX_WAITING = 256


@click.command("collect")
@broker_options
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Dataset folder: images/ and annotations.json (an existing captures folder is added to).",
)
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Keep at most this many images; the oldest go first.",
)
@click.option(
    "--until",
    "until",
    type=click.IntRange(min=1),
    default=None,
    help="Stop once this many new images are stored (not reached within --duration: exit 1).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Stop after this many seconds (default: run until --until or Ctrl-C).",
)
@click.option(
    "--session",
    metavar="NAME",
    default=None,
    help=(
        "Persistent broker session: captures sent while this collector is away wait at the "
        "broker (up to its queue limit) for the next run with the same NAME."
    ),
)
@click.option(
    "--max-distance",
    type=click.IntRange(0, 64),
    default=4,
    show_default=True,
    help="An image whose 64-bit dHash is this close to a stored one is a near-duplicate, dropped.",
)
def collect(
    out_dir: Path,
    session: str | None,
    max_images: int,
    until: int | None,
    duration: float | None,
    max_distance: int,
    **kwargs: Any,
) -> None:
    """Subscribe to the captures of a fleet's devices and store them as a dataset folder.

    The folder is COCO-style (images/ plus annotations.json, as `edgegap eval` reads), with no
    annotations yet: each image keeps the device's detections (`device_detections`) and where it
    came from (device, model version, reason, time). `edgegap relabel` labels it.
    --timeout is the broker's connect timeout.

    \b
    Examples:
      edgegap collect --broker mqtt://broker.lan --fleet warehouse --out captures/
      edgegap collect --broker mqtt://broker.lan --fleet warehouse --out captures/ --until 200 --duration 600
    """
    options, topics = resolve(kwargs)
    if session is not None and not NAME.match(session):
        raise click.BadParameter(
            f"{session!r}: 1-64 letters, digits, '.', '_' or '-'", param_hint="--session"
        )
    store = CaptureStore(out_dir, max_images, max_distance)
    waiting: queue.Queue[tuple[str, bytes]] = queue.Queue(MAX_WAITING)

    def receive(topic: str, payload: bytes) -> None:
        try:
            waiting.put_nowait((topic, payload))
        except queue.Full:
            logger.warning("collect: falling behind; a capture part was dropped")

    conn = Connection(options, "collect", session)
    conn.listen(topics.devices("captures"), receive)  # before connecting: a session's backlog
    with conn:
        store.create()
        conn.subscribe(topics.devices("captures"))
        console.print(f"collecting from {topics.devices('captures')} into {out_dir}")
        _loop(store, waiting, until, duration)
    _summary(store, out_dir)
    if until is not None and store.stored < until:
        within = f" within {duration:g} s" if duration is not None else ""
        raise click.ClickException(f"only {store.stored} of {until} new image(s) arrived{within}")


def _loop(
    store: CaptureStore,
    waiting: queue.Queue[tuple[str, bytes]],
    until: int | None,
    duration: float | None,
) -> None:
    """Store what arrives until --until images are new, --duration passes, or Ctrl-C."""
    assembler = Assembler()
    deadline = time.monotonic() + duration if duration is not None else None
    last_report = time.monotonic()
    with progress() as bar:
        task = bar.add_task("waiting for captures", total=until)
        try:
            while until is None or store.stored < until:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    topic, payload = waiting.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    capture = assembler.add(topic, payload)
                except CaptureError as exc:
                    store.invalid += 1
                    logger.warning("collect: %s: %s", topic, exc)
                    continue
                if capture is not None:
                    store.add(capture)
                bar.update(task, completed=store.stored, description=_line(store))
                if not console.is_terminal and time.monotonic() - last_report >= REPORT_S:
                    console.print(_line(store))
                    last_report = time.monotonic()
        except KeyboardInterrupt:
            console.print("stopped")


def _line(store: CaptureStore) -> str:
    return (
        f"{store.stored} new, {store.duplicates} duplicate, {store.invalid} invalid, "
        f"{len(store)} in store"
    )


def _summary(store: CaptureStore, out_dir: Path) -> None:
    console.print(f"{out_dir}: {_line(store)}, {store.evicted} oldest removed")
