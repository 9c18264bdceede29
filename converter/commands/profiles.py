"""`edgegap profiles`: list and show device profiles."""

from __future__ import annotations

import logging

import click
import yaml
from rich.table import Table

from converter.console import console, human_bytes
from converter.params import PROFILE
from firmware_profiles import Profile, list_profiles

logger = logging.getLogger(__name__)


def _pruning(p: Profile) -> str:
    t = p.pruning
    if t.channels is not None:
        return f"{t.channels:.0%} channels"
    if t.macs is not None:
        return f"≤ {t.macs:,} MACs"
    return f"≤ {t.latency_ms} ms"


@click.group("profiles")
def profiles() -> None:
    """List and show device profiles.

    \b
    Examples:
      edgegap profiles list
      edgegap profiles show coral-edgetpu
      edgegap profiles show ./my-board.yaml
    """


@profiles.command("list")
def list_cmd() -> None:
    """Print every shipped profile as a table."""
    table = Table(title="Device profiles")
    for col in (
        "name",
        "target",
        "runtime",
        "quantization",
        "I/O",
        "max bytes",
        "latency",
        "max drop",
        "pruning",
    ):
        table.add_column(col)
    for p in list_profiles():
        table.add_row(
            p.name,
            f"{p.target.cpu} ({p.target.arch})"
            + (f" + {p.target.accelerator}" if p.target.accelerator else ""),
            f"{p.runtime.engine}, {p.runtime.threads} thr"
            + (f", {p.runtime.delegate}" if p.runtime.delegate else ""),
            p.quantization.scheme.value,
            f"{p.quantization.input_dtype.value}/{p.quantization.output_dtype.value}",
            human_bytes(p.budgets.max_model_bytes),
            f"{p.budgets.latency_ms:g} ms",
            f"{p.budgets.max_accuracy_drop:.1%}",
            _pruning(p),
        )
    console.print(table)


@profiles.command("show")
@click.argument("profile", type=PROFILE)
@click.option(
    "--yaml",
    "as_yaml",
    is_flag=True,
    help="Print the validated profile as YAML instead of a table.",
)
def show_cmd(profile: Profile, as_yaml: bool) -> None:
    """Show one profile: a shipped NAME or a path to a .yaml file."""
    data = profile.model_dump(mode="json")
    if as_yaml:
        click.echo(yaml.safe_dump(data, sort_keys=False))
        return
    table = Table(title=f"Profile {profile.name}", show_header=True)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    table.add_row("description", profile.description)
    for section in ("target", "runtime", "quantization", "budgets", "pruning", "ops"):
        for key, value in data[section].items():
            if isinstance(value, list):
                value = ", ".join(value) if value else "(none)"
            elif value is None:
                value = "any" if (section, key) == ("ops", "allowlist") else "-"
            elif section == "budgets" and key.endswith("_bytes"):
                value = f"{human_bytes(value)} ({value:,})"
            table.add_row(f"{section}.{key}", str(value))
    console.print(table)
