"""`edgegap prune`: remove channels (or zero weights) and write a smaller Keras model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from converter.commands.prune_report import cost_table, kept_table, loss_line, sparsity_table
from converter.console import console
from converter.params import FLOAT_LIST

logger = logging.getLogger(__name__)


def _load(model_path: Path, custom_objects: tuple[str, ...]) -> Any:
    from converter.loading import load_model

    return load_model(model_path, custom_objects).model


def _data(
    path: Path, model: Any, mean: list[float], std: list[float], color_order: str | None, limit: int
) -> Any:
    from agent.bundle.manifest import ColorOrder
    from converter.data import Normalization, default_color_order, load_data

    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    order = ColorOrder(color_order) if color_order else default_color_order(shape[-1])
    ds = load_data(
        path,
        shape,
        Normalization(mean=mean, std=std, color_order=order),
        limit=limit,
        what="--data",
    )
    labels = ds.labels.get("y") if isinstance(ds.labels, dict) else None
    console.print(
        f"data: {ds.source}"
        + (" with labels" if labels is not None else " (no labels: distillation only)")
    )
    return ds.x, labels


def _is_detection_folder(data: Path | None) -> bool:
    from converter.tasks.detection_folder import ANNOTATIONS_FILE

    return data is not None and data.is_dir() and (data / ANNOTATIONS_FILE).is_file()


def _check_detector_options(task: Any, data: Path | None, importance: str) -> None:
    """A detector's sidecar fixes its input normalization: --mean/--std/--color-order given on the
    command line must agree with it (they are not silently ignored)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = {
        name: None
        if ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT)
        else ctx.params[name]
        for name in ("mean", "std", "color_order")
    }
    flag = task.normalization().contradicted_by(given["mean"], given["std"], given["color_order"])
    if flag is not None:
        cfg = task.cfg
        raise click.UsageError(
            f"MODEL is a detector: its sidecar sets the input normalization (mean {cfg.mean:g}, std "
            f"{cfg.std:g}, {cfg.color_order}); drop --{flag} or give the same value"
        )


def _detector_data(task: Any, model: Any, data: Path, limit: int) -> tuple[Any, Any, str]:
    """Inputs normalized as the sidecar says, anchor-matched targets when the folder has COCO
    annotations (else none), and a description of what the fine-tune will see."""
    from converter.data import load_data
    from converter.tasks.detection_folder import ANNOTATIONS_FILE, DatasetError, read_folder
    from converter.zoo.finetune import detection_targets

    cfg = task.cfg
    if _is_detection_folder(data):
        if len(read_folder(data)) == 0:
            raise DatasetError(f"--data {data} has no images")
        ds = task.dataset(data, count=limit)
        targets = detection_targets(cfg, ds.labels.boxes, ds.labels.classes)
        return ds.x, targets, f"{len(ds.x)} labelled images"
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    ds = load_data(data, shape, task.normalization(), limit=limit, what="--data")
    why = (
        f"no {ANNOTATIONS_FILE} in {data}"
        if data.is_dir()
        else f"{data} is not a COCO-style folder"
    )
    return ds.x, None, f"{len(ds.x)} images ({why}, so no detection labels)"


@click.command("prune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--channels", type=float, help="Fraction of channels to remove, in [0, 1), e.g. 0.5.")
@click.option(
    "--importance",
    type=click.Choice(["l1", "l2", "bn", "taylor"]),
    default="l1",
    show_default=True,
    help="Filter L1/L2 norm, BatchNorm |gamma|, or first-order Taylor on --data.",
)
@click.option(
    "--mode",
    type=click.Choice(["uniform", "global"]),
    default="uniform",
    show_default=True,
    help="uniform: every group loses the fraction; global: the least important channels overall.",
)
@click.option(
    "--min-channels",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Channels always kept per group.",
)
@click.option(
    "--round-to",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Round kept channel counts to multiples of this, up or down so the total removed stays "
    "closest to --channels: int8 kernels work in channel tiles, so a multiple can cost no "
    "latency (benchmarks/channel_rounding.py finds it).",
)
@click.option(
    "--protect",
    multiple=True,
    metavar="NAME",
    help="Layer whose output channels are never removed (repeatable or comma-separated).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Image folder or .npy/.npz (x, optional y) for Taylor scores and fine-tuning; for a "
    "detector, a COCO-style folder (annotations.json + images) gives its task loss.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=0),
    help="Fine-tune epochs per step [default: 3 with --data].",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Prune in this many steps, each followed by a fine-tune.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the task loss against distillation when --data has labels (or boxes).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Fine-tune learning rate (Adam).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Stop a fine-tune after this many epochs without validation improvement.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="At most this many samples from --data.",
)
@click.option(
    "--mean",
    type=FLOAT_LIST,
    default="0",
    show_default=True,
    help="Pixel mean for image --data (a detector's sidecar sets its own; another value is an error).",
)
@click.option(
    "--std",
    type=FLOAT_LIST,
    default="255",
    show_default=True,
    help="Pixel std for image --data (a detector's sidecar sets its own; another value is an error).",
)
@click.option(
    "--color-order",
    type=click.Choice(["rgb", "bgr", "gray"]),
    help="Channel order for image --data (a detector's sidecar sets its own).",
)
@click.option(
    "--sparsity",
    type=float,
    help="Unstructured magnitude pruning: fraction of each kernel zeroed (shrinks the zip, not latency).",
)
@click.option(
    "--custom-objects",
    multiple=True,
    help="Python file or module registering custom Keras classes.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the pruned model (.keras).",
)
def prune(
    model: Path, channels: float | None, importance: str, mode: str, min_channels: int, round_to: int,
    protect: tuple[str, ...], data: Path | None, epochs: int | None, steps: int, alpha: float, lr: float,
    batch_size: int, patience: int, limit: int, mean: list[float], std: list[float], color_order: str | None,
    sparsity: float | None, custom_objects: tuple[str, ...], output: Path,
) -> None:  # fmt: skip
    """Remove whole channels from MODEL so it runs faster, optionally fine-tuning with distillation.

    Channels coupled through residual adds, squeeze-excite multiplies and concatenations are removed
    together; layers the channel graph cannot follow are kept whole and listed. Output shapes are
    unchanged. --sparsity instead zeroes weights, which shrinks the zipped file but not latency.

    A detector (MODEL.detector.json next to MODEL) keeps its head output convolutions whole, is
    normalized as its sidecar says, and is fine-tuned with its own loss (anchor-matched boxes and
    classes) plus detection distillation when --data is a COCO-style folder, e.g. from
    `edgegap zoo make-dataset`; on plain images, with detection distillation alone.

    \b
    Examples:
      edgegap prune model.keras --channels 0.5 --output pruned.keras
      edgegap prune model.keras --channels 0.5 --importance taylor --data train.npz --epochs 5 \\
          --steps 3 --protect box_head,class_head --output pruned.keras
      edgegap prune model.keras --sparsity 0.8 --data images/ --epochs 2 --output sparse.keras
      edgegap prune detector.keras --channels 0.5 --data train/ --epochs 3 --steps 2 \\
          --output pruned.keras
    """
    n_epochs = _check_options(channels, sparsity, output, importance, data, epochs)
    names = tuple(n.strip() for item in protect for n in item.split(",") if n.strip())
    task = _detector_task(model)
    if task is not None:
        _check_detector_options(task, data, importance)
    keras_model = _load(model, custom_objects)
    x = labels = None
    tune: dict[str, Any] = {
        "alpha": alpha,
        "learning_rate": lr,
        "batch_size": batch_size,
        "patience": patience,
    }
    if task is not None:
        names, x, labels = _detector_inputs(task, keras_model, names, data, limit, n_epochs, tune)
    elif data is not None:
        x, labels = _data(data, keras_model, mean, std, color_order, limit)
    result = keras_model
    if channels is not None:
        result = _prune_channels(
            keras_model, channels, x, labels, tune, importance=importance, mode=mode,
            min_channels=min_channels, round_to=round_to, protect=names, steps=steps, epochs=n_epochs,
        )  # fmt: skip
    if sparsity is not None:
        result = _zero_weights(
            result, sparsity, x, labels, n_epochs if channels is None else 0, tune
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    result.save(output)
    console.print(f"wrote {output}")
    _copy_sidecar(model, output)


def _check_options(
    channels: float | None, sparsity: float | None, output: Path, importance: str, data: Path | None,
    epochs: int | None,
) -> int:  # fmt: skip
    """Refuse contradictory or out-of-range options; the fine-tune epochs (3 by default with data)."""
    if channels is None and sparsity is None:
        raise click.UsageError(
            "give --channels FRACTION (structured) and/or --sparsity FRACTION (unstructured)"
        )
    if channels is not None and not 0 <= channels < 1:
        raise click.BadParameter(f"{channels} is not in [0, 1)", param_hint="--channels")
    if sparsity is not None and not 0 < sparsity < 1:
        raise click.BadParameter(f"{sparsity} is not in (0, 1)", param_hint="--sparsity")
    if output.suffix != ".keras":
        raise click.BadParameter(
            "the pruned model is written as a .keras file", param_hint="--output"
        )
    if importance == "taylor" and data is None:
        raise click.UsageError("--importance taylor needs --data")
    n_epochs = (3 if data is not None else 0) if epochs is None else epochs
    if n_epochs and data is None:
        raise click.UsageError("--epochs needs --data to fine-tune on")
    if data is not None and not data.exists():
        from converter.data import DataError

        raise DataError(f"--data not found: {data}")
    return n_epochs


def _detector_inputs(
    task: Any, keras_model: Any, names: tuple[str, ...], data: Path | None, limit: int, n_epochs: int,
    tune: dict[str, Any],
) -> tuple[tuple[str, ...], Any, Any]:  # fmt: skip
    """A detector keeps its heads whole and, with data, fine-tunes on its own loss (added to
    `tune`): the protected names, the inputs and the labels (None without data or boxes)."""
    heads = task.protected_layers(keras_model)
    names = (*names, *(h for h in heads if h not in names))
    console.print(
        f"detector: head output convolutions protected: {', '.join(heads) or 'none found'}"
    )
    if data is None:
        return names, None, None
    from converter.pruning import detection_distill_loss
    from converter.zoo.finetune import detection_task_loss

    x, labels, what = _detector_data(task, keras_model, data, limit)
    tune.update(task_loss=detection_task_loss, distill_loss=detection_distill_loss())
    if n_epochs:
        console.print(loss_line(labels, tune["alpha"], what))
    return names, x, labels


def _prune_channels(
    model: Any, channels: float, x: Any, labels: Any, tune: dict[str, Any], *, importance: str, mode: str,
    min_channels: int, round_to: int, protect: tuple[str, ...], steps: int, epochs: int,
) -> Any:  # fmt: skip
    """Structured pruning, with its cost table, the layers kept whole and the fine-tunes printed."""
    from converter.pruning import prune as prune_model

    result, report = prune_model(
        model, channels, importance=importance, mode=mode, min_channels=min_channels, round_to=round_to,
        protect=protect, data=x, labels=labels, steps=steps, epochs=epochs, **tune,
    )  # fmt: skip
    console.print(cost_table(report))
    if report.kept_whole:
        console.print(kept_table(report))
    else:
        console.print("Layers kept whole: none")
    for u in report.unsupported:
        console.print(
            f"[yellow]not followed by the channel graph, kept whole:[/] {u.layer} ({u.reason})"
        )
    for i, ft in enumerate(report.fine_tune, 1):
        console.print(
            f"fine-tune {i}: {ft.epochs_run} epoch(s), validation loss {ft.start_val_loss:.4g} -> "
            f"{ft.best_val_loss:.4g} (best epoch {ft.best_epoch}"
            + (", stopped early)" if ft.stopped_early else ")")
        )
    return result


def _zero_weights(
    model: Any, sparsity: float, x: Any, labels: Any, epochs: int, tune: dict[str, Any]
) -> Any:
    """Unstructured magnitude pruning, with the zipped sizes and the latency note printed."""
    from converter.pruning import LATENCY_NOTE, magnitude_prune

    result, sreport = magnitude_prune(model, sparsity, x, labels, epochs=epochs, **tune)
    console.print(sparsity_table(sreport))
    console.print(f"[bold]Note:[/] {LATENCY_NOTE}")
    return result


def _detector_task(model: Path) -> Any:
    """The detection task when MODEL has a detector sidecar (read now, so a bad one fails early)."""
    from converter.tasks.detection import DetectionTask

    if not DetectionTask.applies_to(model):
        return None
    return DetectionTask.from_model_path(model)


def _copy_sidecar(source: Path, output: Path) -> None:
    """A detector's sidecar (anchors, classes, NMS) still describes the pruned model: the head
    outputs feed reshapes that move the channel axis, so the graph keeps them whole."""
    import shutil

    from converter.tasks.detector_config import has_sidecar, sidecar_path

    if has_sidecar(source):
        shutil.copyfile(sidecar_path(source), sidecar_path(output))
        console.print(f"wrote {sidecar_path(output)} (detector sidecar, copied)")
