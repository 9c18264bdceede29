"""`edgegap zoo`: train the reference detector, and write its dataset to disk."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.progress import Progress, TaskID
from rich.table import Table

from converter.console import console, progress

if TYPE_CHECKING:
    from converter.zoo.training import TrainOutcome

logger = logging.getLogger(__name__)


@click.group("zoo")
def zoo() -> None:
    """Reference models and data: the SSD detector and its synthetic dataset.

    \b
    Examples:
      edgegap zoo train-detector --output model.keras
      edgegap zoo make-dataset --output data/test --split test --count 200
    """


@zoo.command("train-detector")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the .keras model; the sidecar NAME.detector.json goes next to it.",
)
@click.option(
    "--epochs",
    type=click.IntRange(1, 1000),
    default=None,
    help="Training epochs (default: the recipe's).",
)
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Seed of data, weights and order.",
)
@click.option(
    "--train-count",
    type=click.IntRange(64),
    default=None,
    help="Generated training images (default: the recipe's).",
)
@click.option(
    "--val-count",
    type=click.IntRange(16),
    default=300,
    show_default=True,
    help="Validation images for the final mAP.",
)
@click.option(
    "--input-size",
    type=click.IntRange(64, 512),
    default=None,
    help="Input side in pixels, a multiple of 32 (default: the recipe's, 224).",
)
@click.option(
    "--width",
    type=click.FloatRange(0.25, 1.0),
    default=None,
    help="Backbone width multiplier (default: the recipe's, 0.5).",
)
def train_detector(
    output: Path,
    epochs: int | None,
    seed: int,
    train_count: int | None,
    val_count: int,
    input_size: int | None,
    width: float | None,
) -> None:
    """Train the reference SSD detector from scratch on the generated dataset.

    Writes OUTPUT (.keras) and its sidecar, then prints the float mAP on the validation split.
    With the same seed and options the command reproduces the committed weights
    (converter/zoo/weights/detector.keras).

    \b
    Examples:
      edgegap zoo train-detector --output model.keras
      edgegap zoo train-detector --output quick.keras --epochs 1 --train-count 256
      edgegap zoo train-detector --output big.keras --input-size 320 --width 0.5
    """
    if output.suffix != ".keras":
        raise click.BadParameter("the model file must end in .keras", param_hint="--output")
    if output.parent and not output.parent.is_dir():
        raise click.BadParameter(f"folder {output.parent} does not exist", param_hint="--output")
    import dataclasses

    from converter.loading import import_tf, quiet_native_stderr
    from converter.zoo.training import RECIPE, train_reference

    if input_size is not None and input_size % 32:
        raise click.BadParameter(f"{input_size} is not a multiple of 32", param_hint="--input-size")
    recipe = dataclasses.replace(
        RECIPE, input_size=input_size or RECIPE.input_size, width=width or RECIPE.width
    )
    import_tf()
    epochs = epochs or recipe.epochs
    train_count = train_count or recipe.train_count
    with progress() as bar:
        shown = _TrainingProgress(
            bar, bar.add_task("generating data", total=train_count + val_count), epochs
        )
        start = time.monotonic()
        with quiet_native_stderr():
            result = train_reference(
                output, epochs=epochs, seed=seed, train_count=train_count, val_count=val_count, recipe=recipe,
                on_sample=shown.on_sample, on_start=shown.on_start, on_batch=shown.on_batch, on_epoch=shown.on_epoch,
            )  # fmt: skip
    console.print(_trained_table(output, result, time.monotonic() - start))


@dataclass
class _TrainingProgress:
    """The progress bar through data generation and training steps, and a line per epoch."""

    bar: Progress
    task: TaskID
    epochs: int

    def on_sample(self, done: int) -> None:
        self.bar.update(self.task, completed=done)

    def on_start(self, total_steps: int) -> None:
        self.bar.update(self.task, description="training", total=total_steps, completed=0)

    def on_batch(self, step: int, loss: float) -> None:
        self.bar.update(self.task, completed=step, description=f"training (loss {loss:.3f})")

    def on_epoch(self, epoch: int, logs: dict[str, float], seconds: float) -> None:
        console.print(
            f"epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.4f} "
            f"(box {logs.get('box_encodings_loss', float('nan')):.4f}, "
            f"class {logs.get('class_logits_loss', float('nan')):.4f}), {seconds:.0f} s"
        )


def _trained_table(output: Path, result: TrainOutcome, total_seconds: float) -> Table:
    table = Table(title=f"Trained {output}")
    table.add_column("key")
    table.add_column("value")
    table.add_row("training time", f"{result.train_seconds:.0f} s (total {total_seconds:.0f} s)")
    table.add_row("parameters", f"{result.params:,}")
    table.add_row("val mAP@0.5 (float)", f"{result.val.map50:.4f}")
    table.add_row("val mAP@0.5:0.95 (float)", f"{result.val.map50_95:.4f}")
    table.add_row("sidecar", str(result.sidecar))
    return table


@zoo.command("make-dataset")
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write images/ and annotations.json into.",
)
@click.option(
    "--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True
)
@click.option(
    "--count",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Number of images.",
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Dataset seed.")
@click.option(
    "--size",
    type=click.IntRange(32, 2048),
    default=None,
    help="Image side in pixels (default: the detector's input size).",
)
@click.option(
    "--domain",
    type=click.Choice(["a", "b"]),
    default="a",
    show_default=True,
    help="a: the reference dataset; b: the same classes after a camera drift (night, colour "
    "cast, new backgrounds; docs/refresh.md).",
)
def make_dataset(
    output: Path, split: str, count: int, seed: int, size: int | None, domain: str
) -> None:
    """Write a split of the generated detection dataset as a COCO-style folder.

    \b
    Examples:
      edgegap zoo make-dataset --output data/test
      edgegap zoo make-dataset --output data/val --split val --count 300 --seed 0
      edgegap zoo make-dataset --output data/night --split test --domain b
    """
    from converter.zoo.detection_data import generate, write_folder
    from converter.zoo.training import RECIPE

    size = size or RECIPE.input_size
    if output.exists() and any(output.iterdir()):
        raise click.BadParameter(f"{output} exists and is not empty", param_hint="--output")
    samples = []
    with progress() as bar:
        task = bar.add_task(f"generating {split}", total=count)
        for s in generate(split, count, seed=seed, size=size, domain=domain):
            samples.append(s)
            bar.advance(task)
    info = {"split": split, "seed": seed, "count": count, "size": size, "domain": domain}
    ann = write_folder(output, samples, info)
    boxes = sum(len(s.boxes) for s in samples)
    console.print(
        f"wrote {count} images with {boxes} boxes to {output} ({ann.name}: {json.dumps(info)})"
    )
