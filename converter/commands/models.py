"""`edgegap models`: the model registry's versions and their lineage."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from converter.commands.mqtt_options import broker_options, resolve
from converter.console import console, progress

if TYPE_CHECKING:
    from converter.refresh.registry import Version

logger = logging.getLogger(__name__)

REGISTRY_OPTION = click.option(
    "--registry",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("edgegap-models"),
    show_default=True,
    envvar="EDGEGAP_REGISTRY",
    help="Model registry folder (also $EDGEGAP_REGISTRY).",
)


@click.group("models")
def models() -> None:
    """The model registry: versions with float and int8 models, parents, data and gates.

    Any version can be rolled back to (re-issued under a new version number, the same model
    file) or rebuilt (converted again with the recipe its record keeps, and compared).

    \b
    Examples:
      edgegap models list --registry edgegap-models
      edgegap models list --json
      edgegap models show 20261203091500
      edgegap models rollback 20261203091500 --channel lobby-cam --broker mqtt://broker.lan \\
          --sign-key keys/edgegap.key
      edgegap models rebuild 20261203091500 --output rebuilt/
    """


def _gates(doc: list[dict[str, object]]) -> str:
    failed = [str(g["name"]) for g in doc if g.get("status") == "fail"]
    return (
        "all passed" if doc and not failed else ("failed: " + ", ".join(failed) if failed else "-")
    )


def _said(command: str) -> Callable[[str], None]:
    return lambda text: console.print(f"[bold]{command}[/] {text}")


def _parent(v: Version) -> str:
    if "rollback_of" in v.training:
        return f"{v.parent} (rollback)"
    return str(v.parent or "-")


@models.command("list")
@REGISTRY_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def list_cmd(registry: Path, as_json: bool) -> None:
    """List every version, oldest first, with its parent, status, accuracy and gates."""
    from converter.refresh.registry import Registry

    versions = Registry(registry).versions()
    if as_json:
        click.echo(json.dumps([asdict(v) for v in versions], indent=1))
        return
    if not versions:
        console.print(f"no versions in {registry}")
        return
    table = Table(title=f"Model registry {registry}")
    for col in (
        "version",
        "parent",
        "created",
        "status",
        "old mAP@0.5",
        "new mAP@0.5",
        "gates",
        "published",
    ):
        table.add_column(col, justify="right" if "mAP" in col else "left")  # fmt: skip
    for v in versions:
        acc = v.accuracy
        table.add_row(
            str(v.version), _parent(v), v.created, v.status,
            f"{acc['old']:.4f}" if "old" in acc else "-", f"{acc['new']:.4f}" if "new" in acc else "-",
            _gates(v.gates), str(v.published.get("where", "-")) if v.published else "-",
        )  # fmt: skip
    console.print(table)


@models.command("show")
@click.argument("version", type=int)
@REGISTRY_OPTION
def show_cmd(version: int, registry: Path) -> None:
    """Print one version's record and its lineage back to the first version."""
    from converter.refresh.registry import Registry

    reg = Registry(registry)
    chain = reg.lineage(version)
    click.echo(json.dumps(asdict(chain[0]), indent=1))
    console.print("lineage: " + " <- ".join(f"v{v.version}" for v in chain))
    console.print(f"float model: {reg.model(version)}; bundle: {reg.bundle(version) or 'none'}")


@models.command("rollback")
@click.argument("version", type=int)
@click.option("--channel", required=True, help="Channel to publish the re-issued version to.")
@click.option("--sign-key", type=click.Path(path_type=Path, dir_okay=False),
              help="Ed25519 private key to sign the re-issued bundle with (required).")  # fmt: skip
@click.option("--stage", type=click.Choice(["canary", "stable"]), default="stable",
              show_default=True, help="stable: every device at once; canary: the staged rollout, "
              "waiting for it to promote or halt the version.")  # fmt: skip
@click.option("--window", type=click.FloatRange(1), default=60.0, show_default=True,
              help="With --stage canary: seconds every canary must stay within bounds.")  # fmt: skip
@click.option("--max-wait", type=click.FloatRange(1), default=600.0, show_default=True,
              help="With --stage canary: a rollout not promoted by then is halted.")  # fmt: skip
@click.option("--force", is_flag=True, help="Roll back to a version that was rejected or halted.")
@REGISTRY_OPTION
@broker_options
def rollback_cmd(version: int, registry: Path, **kwargs: Any) -> None:
    """Publish VERSION's stored model again, under a new version number.

    A channel only accepts a version above its current one, so VERSION's signed int8 bundle is
    re-issued as a new version (above the channel's and the registry's highest), signed with
    --sign-key, with the same model file: a device that still has that model in its store
    activates it without downloading it. The new version goes into the registry with VERSION
    as its parent and training {"rollback_of": VERSION}. Refused: a version not in the
    registry, without a bundle, rejected or halted (without --force); a missing key; a broker
    that does not answer.

    \b
    Examples:
      edgegap models rollback 20261203091500 --channel lobby-cam --broker mqtt://broker.lan \\
          --sign-key keys/edgegap.key
      edgegap models rollback 20261203091500 --channel lobby-cam --broker mqtts://broker.lan \\
          --ca ca.crt --sign-key keys/edgegap.key --stage canary --window 120
    """
    from converter.refresh.publish import Publisher, refresh_bounds
    from converter.refresh.registry import Registry
    from converter.refresh.rollback import rollback
    from converter.rollout import Bounds

    broker, topics = resolve(kwargs)
    channel, stage = kwargs["channel"], kwargs["stage"]
    bounds = Bounds(window_s=kwargs["window"]) if stage == "canary" else refresh_bounds()
    publisher = Publisher(broker, topics, channel, stage, bounds, kwargs["max_wait"])
    done = rollback(Registry(registry), version, (broker, topics, channel), kwargs["sign_key"],
                    publisher, kwargs["force"],
                    say=_said("rollback"))  # fmt: skip
    v = done.version
    line = (f"v{version} -> v{v.version}: model sha256 {done.sha256[:16]}… (the same file), "
            f"{v.status}")  # fmt: skip
    if not done.ok:
        raise click.ClickException(f"{line}: {done.published.get('reason', '')}")
    console.print(f"[green]rolled back[/] {line} to {done.published.get('where')}")


@models.command("rebuild")
@click.argument("version", type=int)
@REGISTRY_OPTION
@click.option("--output", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the rebuilt bundle [default: rebuilt-vVERSION].")  # fmt: skip
@click.option("--sign-key", type=click.Path(path_type=Path, dir_okay=False),
              help="Sign the rebuilt bundle with this Ed25519 private key.")  # fmt: skip
def rebuild_cmd(version: int, registry: Path, output: Path | None, sign_key: Path | None) -> None:
    """Convert VERSION's float model again as it was converted, and compare.

    The version's record keeps its conversion recipe: the converter's options, the profile in
    full and a copy of the calibration and validation data. The rebuilt bundle matches when its
    model file has the stored bundle's sha256, or else reproduces the stored golden outputs
    within tolerance with every gate passed. Exits 1 when it does not match, and for a version
    recorded before recipes were kept (convert its model.keras with `edgegap convert` then).

    \b
    Examples:
      edgegap models rebuild 20261203091500
      edgegap models rebuild 20261203091500 --output rebuilt/ --sign-key keys/edgegap.key
    """
    from converter.commands.convert import ProgressReporter
    from converter.loading import import_tf
    from converter.pipeline import STAGES
    from converter.refresh.rebuild import rebuild
    from converter.refresh.registry import Registry

    import_tf()
    out = output or Path(f"rebuilt-v{version}")
    with progress() as bar:
        reporter = ProgressReporter(bar, STAGES)
        done = rebuild(Registry(registry), version, out, sign_key, _said("rebuild"), reporter)
        reporter.finish()
    line = (f"v{version} rebuilt into {done.bundle}: sha256 {done.sha256[:16]}… "
            f"(stored {done.stored_sha256[:16]}…): {done.how}")  # fmt: skip
    if not done.matches:
        raise click.ClickException(f"does not match: {line}")
    console.print(f"[green]matches[/] {line}")
