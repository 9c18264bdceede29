"""`edgegap publish`: ship a bundle to a channel over MQTT (docs/protocol.md, docs/publish.md)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from agent.updates.protocol import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    STABLE,
    Topics,
)
from converter.broker_client import BrokerOptions, Connection
from converter.commands.mqtt_options import broker_options, resolve
from converter.console import console, human_bytes, progress
from converter.publishing import Prepared, prepare, publish
from converter.rollout import Controller, start_rollout

logger = logging.getLogger(__name__)


@click.command("publish")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--channel", required=True, help="Channel to publish to (one topic level).")
@broker_options
@click.option(
    "--chunk-size",
    type=click.IntRange(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
    default=DEFAULT_CHUNK_SIZE,
    show_default=True,
    help="Bytes per chunk message (the default fits a 128 KB broker message limit).",
)
@click.option(
    "--stage",
    type=click.Choice(["canary", "stable"]),
    default=STABLE,
    show_default=True,
    help="canary: offer it to the canary group first (`edgegap rollout watch` promotes it).",
)
@click.option("--allow-unsigned", is_flag=True, help="Publish a bundle that is not signed.")
@click.option(
    "--key",
    "keys",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Check the signature against this public key first (repeatable).",
)
def publish_cmd(bundle: Path, channel: str, stage: str, **kwargs: Any) -> None:
    """Publish BUNDLE as the new release of CHANNEL.

    The model goes out as retained, content-addressed chunks (blobs/<sha256>/<index>), then
    blobs/<sha256>/meta, then the release on models/<channel>/manifest, each acknowledged by the
    broker. Refused: an unsigned bundle (without --allow-unsigned), and a version that is not
    above the channel's current one. The password comes from --password-file or
    $EDGEGAP_MQTT_PASSWORD, never from the command line.

    With --stage canary the release goes to models/<channel>/canary/manifest, which only
    devices of the canary group follow, and a rollout record is written on
    models/<channel>/rollout; `edgegap rollout watch` then promotes it to stable or halts it.
    It is refused when no canary device of the channel is online.

    \b
    Examples:
      edgegap publish bundle/ --broker mqtt://broker.lan --fleet warehouse --channel lobby-cam
      EDGEGAP_MQTT_USERNAME=publisher edgegap publish bundle/ --channel lobby-cam \\
          --broker mqtts://broker.lan --ca ca.crt --password-file ~/.edgegap/mqtt-password
      edgegap publish bundle/ --broker mqtt://127.0.0.1:1883 --channel lab --allow-unsigned
      edgegap publish bundle/ --broker mqtt://broker.lan --channel lobby-cam --stage canary
    """
    options, topics = resolve(kwargs)
    prepared = prepare(
        bundle, channel, kwargs["chunk_size"], kwargs["allow_unsigned"], kwargs["keys"]
    )
    m, blob = prepared.manifest, prepared.release.blob
    if stage != STABLE:
        _publish_to_canary(options, topics, prepared)
        return
    with Connection(options, "publish") as conn, progress() as bar:
        task = bar.add_task(f"{m.name} v{m.version} → {channel}", total=blob.size)
        done = bar.update
        result = publish(conn, topics, prepared, lambda n: done(task, advance=n))
    before = f"v{result.previous}" if result.previous is not None else "empty"
    rate = blob.size / result.seconds / 2**20 if result.seconds > 0 else float("inf")
    console.print(
        f"[green]published {m.name} v{m.version} to {topics.release(channel)}[/] "
        f"(was {before}): {human_bytes(blob.size)} in {blob.chunks} chunks, "
        f"sha256 {blob.sha256[:16]}…, {result.seconds:.2f} s ({rate:.0f} MiB/s)"
    )


def _publish_to_canary(options: BrokerOptions, topics: Topics, prepared: Prepared) -> None:
    m, blob, channel = prepared.manifest, prepared.release.blob, prepared.release.channel
    with Connection(options, "publish") as conn, progress() as bar:
        task = bar.add_task(f"{m.name} v{m.version} → {channel} (canary)", total=blob.size)
        done = bar.update
        controller = Controller(conn, topics, channel).open()
        record = start_rollout(controller, prepared, lambda n: done(task, advance=n))
    console.print(
        f"[green]published {m.name} v{m.version} to {topics.release(channel, 'canary')}[/]: "
        f"{record.reason} ({', '.join(record.devices)}); "
        f"next: edgegap rollout watch --channel {channel}"
    )
