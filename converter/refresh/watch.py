"""`edgegap refresh --watch`: relabel and refresh by itself as captures arrive, no human step.

Captures that have arrived since the last refresh are the images of the capture folder with no
"label" entry yet (`edgegap collect` writes them so). When there are `every` of them, or when
`schedule` seconds have passed since the last refresh and there is at least one, the folder is
relabelled by the teacher and the newest published version (or --student, at first) is
refreshed, gated and published.
"""

from __future__ import annotations

import dataclasses
import logging
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


def unlabelled(folder: Path) -> int:
    """Captures in folder that no relabel has seen; 0 while the folder is empty or absent."""
    try:
        return sum("label" not in e for e in read_captures(folder).images)
    except DatasetError:
        return 0


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
    from converter.refresh.relabel import relabel

    outcomes: list[RefreshOutcome] = []
    last = time.monotonic()
    current_student(opts)  # a registry without a version and no --student fails at once
    say(f"watching {opts.data}: a refresh every {plan.every} new captures")
    while not plan.rounds or len(outcomes) < plan.rounds:
        waiting = unlabelled(opts.data)
        if not due(waiting, plan, time.monotonic() - last):
            sleep(plan.interval)
            continue
        student = current_student(opts)
        teacher = opts.teacher or student
        say(f"{waiting} new captures: relabel with {teacher.name}, refresh {student}")
        labelled = relabel(opts.data, teacher)
        say(f"relabelled {labelled.images} captures: {labelled.review} marked for review")
        outcome = refresh(dataclasses.replace(opts, student=student), say=say)
        show(outcome)
        outcomes.append(outcome)
        last = time.monotonic()
    return outcomes
