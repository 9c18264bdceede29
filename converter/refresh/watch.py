"""`edgegap refresh --watch`: relabel and refresh by itself as captures arrive, no human step.

The capture folder belongs to `edgegap collect`, which keeps adding to it; captures that
arrived since the last refresh are its images with an id above the last one used (kept in
REGISTRY/watch.json). When there are `every` of them, or when `schedule` seconds have passed since
the last refresh and there is at least one, the folder is copied into REGISTRY/data/<time>/ (the
version's data, kept so that it can be rebuilt), the copy is relabelled by the teacher, and the
newest published version (or --student, at first) is refreshed from it, gated and published.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from converter.refresh.captures import read_captures
from converter.refresh.loop import RefreshError, RefreshOptions, RefreshOutcome, refresh
from converter.refresh.registry import Registry
from converter.tasks.detection_folder import DatasetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watch:
    every: int = 200  # new captures that start a refresh
    interval: float = 30.0  # seconds between looks at the folder
    schedule: float | None = None  # also refresh this often, if anything new arrived
    rounds: int = 0  # stop after this many refreshes; 0: never


def _state(registry: Path) -> Path:
    return Path(registry) / "watch.json"


def last_used(registry: Path) -> int:
    try:
        return int(json.loads(_state(registry).read_text())["last_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def arrived(folder: Path, after: int) -> tuple[int, int]:
    """(captures with an id above `after`, the highest id); (0, after) while there are none."""
    try:
        ids = [int(e["id"]) for e in read_captures(folder).images]
    except DatasetError:
        return 0, after
    return sum(i > after for i in ids), max(ids, default=after)


def snapshot(folder: Path, registry: Path) -> Path:
    """A copy of the capture folder as it is now, in the registry: the refresh's training data."""
    out = Path(registry) / "data" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    captures = read_captures(folder)
    for entry in captures.images:
        dest = out / str(entry["file_name"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(captures.file(entry), dest)
    (out / "annotations.json").write_text(json.dumps(captures.doc, indent=1) + "\n")
    return out


def current_student(opts: RefreshOptions) -> Path:
    """The newest published version's float model, else the --student given."""
    registry = Registry(opts.registry)
    live = registry.deployed()
    if live is not None:
        return registry.model(live.version)
    if opts.student is None:
        raise RefreshError(f"the registry {opts.registry} has no published version: give --student")
    return Path(opts.student)


def due(waiting: int, plan: Watch, since_last: float) -> bool:
    if waiting >= plan.every:
        return True
    return plan.schedule is not None and waiting > 0 and since_last >= plan.schedule


def watch(
    opts: RefreshOptions,
    plan: Watch,
    say: Callable[[str], None] = logger.info,
    show: Callable[[RefreshOutcome], None] = lambda o: None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[RefreshOutcome]:
    """Run refreshes as captures arrive, until plan.rounds refreshes have run (or forever)."""

    outcomes: list[RefreshOutcome] = []
    last = time.monotonic()
    current_student(opts)  # a registry without a version and no --student fails at once
    say(f"watching {opts.data}: a refresh every {plan.every} new captures")
    while not plan.rounds or len(outcomes) < plan.rounds:
        waiting, newest = arrived(opts.data, last_used(opts.registry))
        if not due(waiting, plan, time.monotonic() - last):
            sleep(plan.interval)
            continue
        outcomes.append(_round(opts, waiting, newest, say))
        show(outcomes[-1])
        last = time.monotonic()
    return outcomes


def _round(
    opts: RefreshOptions, waiting: int, newest: int, say: Callable[[str], None]
) -> RefreshOutcome:
    """Snapshot, relabel, refresh; the captures up to `newest` count as used."""
    from converter.refresh.relabel import relabel

    student = current_student(opts)
    teacher = opts.teacher or student
    data = snapshot(opts.data, opts.registry)
    say(f"{waiting} new captures: relabel {data} with {teacher.name}, refresh {student}")
    labelled = relabel(data, teacher)
    say(f"relabelled {labelled.images} captures: {labelled.review} marked for review")
    outcome = refresh(dataclasses.replace(opts, student=student, data=data), say=say)
    _state(opts.registry).write_text(json.dumps({"last_id": newest}) + "\n")
    return outcome
