"""`edgegap eval`: COCO mAP of detectors (bundles or Keras models) on a COCO-style folder."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.table import Table

from converter.console import console, progress

logger = logging.getLogger(__name__)


@click.command("eval")
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="COCO-style folder: annotations.json and the images it names.",
)
@click.option(
    "--count", type=click.IntRange(0), default=0, help="Use only the first N images (0 = all)."
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Interpreter threads for bundles.",
)
def eval_cmd(models: tuple[Path, ...], data_dir: Path, count: int, threads: int) -> None:
    """Score detectors on a dataset: mAP@0.5 and mAP@0.5:0.95 (COCO protocol).

    Each MODEL is a bundle folder (its model.tflite runs in the interpreter, outputs read by the
    manifest's roles) or a .keras detector with its sidecar (float). Several models print side
    by side.

    \b
    Examples:
      edgegap zoo make-dataset --output data/test
      edgegap eval bundle/ --data data/test
      edgegap eval converter/zoo/weights/detector.keras bundle-int8/ --data data/test
    """
    from converter.loading import import_tf, quiet_native_stderr
    from converter.tasks.detection_folder import read_folder
    from converter.zoo.evaluate import EvalError, evaluate_bundle, evaluate_keras_file

    folder = read_folder(data_dir)
    for path in models:
        if not path.is_dir() and path.suffix != ".keras":
            raise EvalError(f"{path}: expected a bundle folder or a .keras detector")
    if any(p.suffix == ".keras" for p in models):
        import_tf()
    results = []
    with progress() as bar, quiet_native_stderr():
        task = bar.add_task("evaluating", total=len(models))
        for path in models:
            if path.is_dir():
                results.append(evaluate_bundle(path, folder, threads, count))
            else:
                results.append(evaluate_keras_file(path, folder, count))
            bar.advance(task)
    table = Table(title=f"Detection accuracy on {data_dir} ({', '.join(folder.labels)})")
    for col in ("model", "kind", "images", "mAP@0.5", "mAP@0.5:0.95"):
        table.add_column(col, justify="right" if col.startswith(("mAP", "images")) else "left")
    for r in results:
        table.add_row(
            r.model,
            r.kind,
            str(r.result.images),
            f"{r.result.map50:.4f}",
            f"{r.result.map50_95:.4f}",
        )
    console.print(table)
