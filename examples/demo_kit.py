"""What the demo's steps share: the Demo state, step headings, and running `edgegap` commands."""

from __future__ import annotations

import contextlib
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from converter.console import console  # noqa: E402


class DemoError(Exception):
    """A step failed; the message says which and why (the demo prints it and exits 1)."""


@dataclass
class Demo:
    """What the steps share: where things are written, and what earlier steps produced."""

    out: Path
    quick: bool = False
    files: dict[str, Path] = field(default_factory=dict)
    results: list[Any] = field(default_factory=list)  # converter.pipeline.ConvertResult per profile
    bundles: dict[str, Path] = field(default_factory=dict)
    train_detector: bool = False
    detector_bundles: dict[str, Path] = field(default_factory=dict)
    broker: str | None = None  # --broker: a broker of the user's; None: the demo starts one
    fleet: str = "demo"
    device: Any = None  # demo_loop.Device once the agent runs
    refreshed: Path | None = None  # the v2 bundle
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


def heading(text: str) -> None:
    console.rule(f"[bold]{text}")


def edgegap(*args: Any) -> None:
    """Run an `edgegap` command in this process, exactly as a user would type it."""
    from converter.cli import cli

    argv = [str(a) for a in args]
    console.print(f"[dim]$ edgegap {shlex.join(argv)}[/]")
    try:
        cli.main(argv, prog_name="edgegap", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        raise DemoError(f"`edgegap {argv[0]}` failed: {exc.format_message()}") from None
    except SystemExit as exc:
        if exc.code:
            raise DemoError(f"`edgegap {argv[0]}` exited with {exc.code}") from None
