"""`edgegap relabel`: pseudo-label a capture folder with a float teacher."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from converter.console import console, progress

logger = logging.getLogger(__name__)


@click.command("relabel")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--teacher",
    type=click.Path(path_type=Path),
    required=True,
    help="Float .keras detector with its sidecar: the deployed version's float model, or a "
    "larger one (edgegap zoo train-detector --width 1.0).",
)
@click.option(
    "--keep",
    type=click.FloatRange(0.01, 1.0),
    default=0.5,
    show_default=True,
    help="Teacher score from which a detection becomes a label.",
)
@click.option(
    "--review",
    type=click.FloatRange(0.01, 1.0),
    default=0.3,
    show_default=True,
    help="Scores from here up to --keep are uncertain: written as ignored regions "
    '("iscrowd": 1) and their image marked for review.',
)
@click.option(
    "--no-correct",
    is_flag=True,
    help="Show the teacher the raw captures, without the colour and exposure correction.",
)
def relabel_cmd(folder: Path, teacher: Path, keep: float, review: float, no_correct: bool) -> None:
    """Pseudo-label the captures in FOLDER (images/ + annotations.json) with a teacher.

    Confident detections become annotations. Uncertain ones are kept as ignored regions and
    their image is marked "review" in annotations.json. Reviewing is optional: edit the
    image's annotations (set "iscrowd" to 0 to accept a box, delete it to reject it) and set
    its "label" status to "reviewed"; relabel never overwrites a reviewed image.

    \b
    Examples:
      edgegap relabel captures/ --teacher converter/zoo/weights/detector.keras
      edgegap relabel captures/ --teacher big.keras --keep 0.6 --review 0.25
    """
    from converter.loading import import_tf, quiet_native_stderr
    from converter.refresh.captures import read_captures
    from converter.refresh.relabel import load_teacher, relabel

    if review > keep:
        raise click.BadParameter(f"{review} is above --keep {keep}", param_hint="--review")
    import_tf()
    with quiet_native_stderr():
        load_teacher(teacher)  # a missing or broken teacher fails before the captures are read
    total = len(read_captures(folder).images)
    with progress() as bar, quiet_native_stderr():
        task = bar.add_task(f"relabelling {folder}", total=total)
        result = relabel(folder, teacher, keep, review, not no_correct,
                         on_batch=lambda n: bar.advance(task, n))  # fmt: skip
    console.print(
        f"labelled {result.images} images with {teacher.name}: {result.confident} confident, "
        f"{result.review} marked for review ({result.uncertain} uncertain boxes ignored), "
        f"{result.reviewed} reviewed kept; {result.boxes} boxes -> {result.annotations}"
    )
