"""`edgegap models`: the model registry's versions and their lineage."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from converter.console import console

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

    \b
    Examples:
      edgegap models list --registry edgegap-models
      edgegap models list --json
      edgegap models show 20261203091500
    """


def _gates(doc: list[dict[str, object]]) -> str:
    failed = [str(g["name"]) for g in doc if g.get("status") == "fail"]
    return (
        "all passed" if doc and not failed else ("failed: " + ", ".join(failed) if failed else "-")
    )


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
            str(v.version), str(v.parent or "-"), v.created, v.status,
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
