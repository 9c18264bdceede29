"""Terminal output for the host CLI: one rich console, tables and progress bars."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from converter.gates import GateResult

logger = logging.getLogger(__name__)


def _width() -> int | None:
    """Terminal width when there is one; a wide page for pipes and logs, so tables stay readable."""
    if os.environ.get("COLUMNS"):
        return int(os.environ["COLUMNS"])
    return None if sys.stdout.isatty() else 160


console = Console(highlight=False, width=_width())


@contextmanager
def progress() -> Iterator[Progress]:
    """A progress display for long stages; it goes quiet when output is not a terminal."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    ) as bar:
        yield bar


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


_STATUS_STYLE = {"pass": "green", "fail": "bold red", "info": "yellow"}


def gates_table(gates: Sequence[GateResult]) -> Table:
    """The gates of a convert or an import: name, status, value, limit and note."""
    table = Table(title="Gates", title_justify="left")
    for col in ("gate", "status", "value", "limit", "note"):
        table.add_column(col, overflow="fold")
    for g in gates:
        table.add_row(
            g.name,
            Text(g.status, style=_STATUS_STYLE.get(g.status, "")),
            g.value,
            g.limit,
            g.reason,
        )
    return table
