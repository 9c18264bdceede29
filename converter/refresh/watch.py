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

from converter.refresh.captures import NoCaptures, read_captures
from converter.refresh.loop import (
    RefreshError,
    RefreshOptions,
    RefreshOutcome,
    check_inputs,
    refresh,
)
from converter.refresh.registry import Registry

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
    except NoCaptures:
        return 0, after
    return sum(i > after for i in ids), max(ids, default=after)


def snapshot(folder: Path, registry: Path) -> Path:
    """A copy of the capture folder as it is now, in the registry: the refresh's training data.
    An image the collector removed (its oldest, past --max-images) while this copies is left out."""
    base = Path(registry) / "data" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out, n = base, 0
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    captures = read_captures(folder)
    kept = []
    for entry in captures.images:
        dest = out / str(entry["file_name"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(captures.file(entry), dest)
        except FileNotFoundError:
            continue
        kept.append(entry)
    ids = {int(e["id"]) for e in kept}
    doc = {**captures.doc, "images": kept,
           "annotations": [a for a in captures.doc["annotations"] if int(a["image_id"]) in ids]}  # fmt: skip
    (out / "annotations.json").write_text(json.dumps(doc, indent=1) + "\n")
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
    _check(opts)
    outcomes: list[RefreshOutcome] = []
    last, told = time.monotonic(), -1
    say(f"watching {opts.data}: a refresh every {plan.every} new captures"
        + (f" or every {plan.schedule:g} s" if plan.schedule else ""))  # fmt: skip
    while not plan.rounds or len(outcomes) < plan.rounds:
        waiting, newest = arrived(opts.data, last_used(opts.registry))
        if not due(waiting, plan, time.monotonic() - last):
            if waiting != told:
                say(f"{waiting} of {plan.every} new captures: waiting")
                told = waiting
            sleep(plan.interval)
            continue
        outcomes.append(_round(opts, waiting, say))
        show(outcomes[-1])
        last, told = time.monotonic(), -1
    return outcomes


def _check(opts: RefreshOptions) -> None:
    """Bad input fails at once, not at the first refresh: a capture folder that is missing or not
    one (an empty one is fine: captures are yet to come), no student, a missing holdout, key..."""
    if not Path(opts.data).is_dir():
        raise RefreshError(
            f"capture folder not found: {opts.data} (edgegap collect --out DIR makes it)"
        )
    arrived(opts.data, 0)
    check_inputs(dataclasses.replace(opts, student=current_student(opts)))


def _round(opts: RefreshOptions, waiting: int, say: Callable[[str], None]) -> RefreshOutcome:
    """Snapshot, relabel, refresh; the captures in the snapshot count as used."""
    from converter.loading import import_tf, quiet_native_stderr
    from converter.refresh.relabel import relabel

    import_tf()
    student = current_student(opts)
    teacher = opts.teacher or student
    data = snapshot(opts.data, opts.registry)
    newest = arrived(data, 0)[1]
    say(f"{waiting} new captures: relabel {data} with {teacher.name}, refresh {student}")
    with quiet_native_stderr():
        labelled = relabel(data, teacher)
    say(f"relabelled {labelled.images} captures: {labelled.review} marked for review")
    outcome = refresh(dataclasses.replace(opts, student=student, data=data), say=say)
    state = {"last_id": newest, "version": outcome.version.version, "data": str(data),
             "status": outcome.version.status}  # fmt: skip
    _state(opts.registry).write_text(json.dumps(state) + "\n")
    return outcome
