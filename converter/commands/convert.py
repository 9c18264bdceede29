"""`edgegap convert`: quantize a Keras model for a device profile, check its gates, write a bundle."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from converter.console import console, progress
from converter.params import FLOAT_LIST, PROFILE, SHAPE, bundle_options
from converter.tasks import TASK_NAMES as TASKS
from firmware_profiles import Profile

if TYPE_CHECKING:
    from converter.options import ConvertOptions

logger = logging.getLogger(__name__)


class ProgressReporter:
    """Shows pipeline stages as one rich progress bar."""

    def __init__(self, bar: Any, stages: tuple[str, ...]) -> None:
        self.bar = bar
        self.stages = stages
        self.task = bar.add_task("starting", total=len(stages))

    def stage(self, name: str) -> None:
        done = self.stages.index(name) if name in self.stages else 0
        self.bar.update(self.task, completed=done, description=name)

    def detail(self, text: str) -> None:
        self.bar.update(self.task, description=text)

    def finish(self) -> None:
        self.bar.update(self.task, completed=len(self.stages), description="done")


def budget_pair(values: list[float] | None) -> tuple[float, float] | None:
    """--fallback-budget as (size, latency); one value stands for both."""
    if values is None:
        return None
    if len(values) not in (1, 2) or any(not 0 <= v <= 10 for v in values):
        raise click.BadParameter(
            "give one fraction or SIZE,LATENCY, each between 0 and 10",
            param_hint="--fallback-budget",
        )
    return (values[0], values[-1])


@click.command("convert")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--profile", type=PROFILE, required=True, help="Shipped profile NAME or a profile .yaml file."
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    required=True,
    help="Image folder (jpg/png) or .npy/.npz array used to calibrate quantization.",
)
@click.option(
    "--validation",
    type=click.Path(path_type=Path),
    help="Held-out data for the accuracy gate (same formats); default: the calibration data.",
)
@click.option(
    "--mean",
    type=FLOAT_LIST,
    help="Pixel mean: one value or one per channel, e.g. 127.5 or 123.7,116.3,103.5 "
    "[default: 0; a detector's sidecar sets its own].",
)
@click.option(
    "--std",
    type=FLOAT_LIST,
    help="Pixel std: one value or one per channel. Inputs are (pixel - mean) / std "
    "[default: 255; a detector's sidecar sets its own].",
)
@click.option(
    "--color-order",
    type=click.Choice(["rgb", "bgr", "gray"]),
    help="Channel order the model expects [default: gray for 1 channel, else rgb].",
)
@click.option(
    "--fold-bgr",
    is_flag=True,
    help="Make an RGB model take BGR frames as OpenCV gives them, by reversing its first layers' "
    "input channels: the device skips a pass over each frame. Other TFLite tools then need BGR too.",
)
@click.option(
    "--input-dtype",
    type=click.Choice(["int8", "uint8"]),
    help="Model input dtype [default: the profile's]. uint8 takes camera pixels as they come, as "
    "Frigate's and Coral's TFLite detectors feed them.",
)
@click.option(
    "--input-shape",
    type=SHAPE,
    help="Input shape H,W,C for a subclassed Keras model, which has none of its own: the model is "
    "wrapped in a functional one taking that shape.",
)
@click.option(
    "--pixel-exact",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Fold the input normalization into the first convolutions so the int8 input is exactly "
    "pixel - 128 (no rounding ties, same on host and device). auto: where the normalization would "
    "leave the input off the pixel grid (e.g. --mean 127.5) and the model allows it.",
)
@click.option(
    "--resize",
    type=click.Choice(["stretch", "letterbox"]),
    default="stretch",
    show_default=True,
    help="How images are fitted to the model input (recorded for the device).",
)
@click.option(
    "--labels", type=click.Path(path_type=Path), help="Text file, one class label per line."
)
@click.option(
    "--task",
    type=click.Choice(TASKS),
    default="auto",
    show_default=True,
    help="What the model does; auto picks classification for one [batch, classes] output.",
)
@bundle_options
@click.option(
    "--no-fallback", is_flag=True, help="Never keep layers in float, even if the profile allows it."
)
@click.option(
    "--fallback-budget",
    type=FLOAT_LIST,
    help="Most size and latency the float fallback may add over pure int8, as fractions: one value "
    "for both, or SIZE,LATENCY, e.g. 0.1 or 0.05,0.2 [default: the profile's, 0.1 on CPU profiles]. "
    "0 keeps every layer int8.",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Samples used to calibrate.",
)
@click.option(
    "--activation-ranges",
    type=click.Choice(["mse", "minmax"]),
    default="mse",
    show_default=True,
    help="int8 activation ranges: mse narrows each calibrated min/max range to the one with the "
    "least int8 error on the calibration data (outliers clipped); minmax keeps the full range.",
)
@click.option(
    "--conditioning",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="int8 schemes, Keras models: equalize each int8 tensor's channel ranges by rescaling the "
    "layers on either side (exact in float), then take out the output shift int8 weights cause "
    "from the biases; kept only if the int8 outputs come closer to float. auto: only where pure "
    "int8 misses the accuracy gate; on: always.",
)
@click.option(
    "--validation-samples",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Samples used for the accuracy gate.",
)
@click.option(
    "--latency-runs",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Invokes timed for the latency figures.",
)
@click.option(
    "--custom-objects",
    multiple=True,
    help="Python file or module defining custom Keras classes (repeatable); its Keras classes are "
    "also registered under their bare names.",
)
@click.option(
    "--prune",
    "do_prune",
    is_flag=True,
    help="Remove channels to the profile's pruning target before quantizing (see `edgegap prune`).",
)
@click.option(
    "--prune-epochs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Distillation fine-tuning epochs on the calibration data after pruning.",
)
@click.option("--protect", multiple=True, help="Layer name never pruned (repeatable).")
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Bundle directory: model.tflite, manifest.json and report.json.",
)
def convert(model: Path, profile: Profile, output: Path, force: bool, **params: Any) -> None:
    """Quantize MODEL (.keras, .h5 or SavedModel dir) for a device profile and write a bundle.

    Every gate (ops, size, arena, accuracy, latency) is checked; a failed gate exits non-zero
    unless --force is given.

    \b
    Examples:
      edgegap convert model.keras --profile raspberry-pi-4 --calibration images/ --output bundle/
      edgegap convert model.h5 --profile coral-edgetpu --calibration calib.npy \\
          --validation val.npz --mean 127.5 --std 127.5 --labels labels.txt --output bundle/
      edgegap convert saved_model/ --profile ./my-board.yaml --calibration images/ \\
          --sign-key keys/edgegap.key --name fridge-cam --version 7 --output bundle/
      edgegap convert model.keras --profile raspberry-pi-4 --calibration train.npz \\
          --prune --prune-epochs 3 --validation val.npz --output bundle/
      edgegap convert detector.keras --profile x86-avx2 --calibration images/ --fold-bgr --output bundle/
      edgegap convert detector.keras --profile x86-avx2 --calibration images/ \\
          --input-dtype uint8 --output bundle/          # for Frigate's CPU detector
      edgegap convert subclassed.keras --input-shape 96,96,3 --custom-objects my_layers.py \\
          --profile raspberry-pi-4 --calibration images/ --output bundle/
      edgegap convert model.h5 --profile x86-avx2 --calibration images/ --validation val/ \\
          --mean 127.5 --std 127.5 --fallback-budget 0.05 --output bundle/
    """
    refuse_tflite(model, profile, output)
    from converter.pipeline import STAGES
    from converter.pipeline import convert as run_convert
    from converter.report import render

    opts = convert_options(model=model, profile=profile, output=output, force=force, **params)
    with progress() as bar:
        reporter = ProgressReporter(bar, STAGES)
        result = run_convert(opts, reporter)
        reporter.finish()
    console.print(render(result))
    if not result.passed:
        if not force:
            raise click.ClickException(
                f"{result.reason} (no bundle written; --force writes it marked failed)"
            )
        console.print(f"[bold red]bundle written with failed gates[/] ({result.reason})")


def convert_options(**params: Any) -> ConvertOptions:
    """The command's parameters as ConvertOptions: the same names, but for these six."""
    from agent.bundle.manifest import ColorOrder, ResizeMode
    from converter.options import ConvertOptions
    from firmware_profiles import IODtype

    color, resize, dtype = (
        params.pop("color_order"),
        params.pop("resize"),
        params.pop("input_dtype"),
    )
    return ConvertOptions(
        color_order=ColorOrder(color) if color else None,
        resize=ResizeMode(resize),
        input_dtype=IODtype(dtype) if dtype else None,
        fallback=not params.pop("no_fallback"),
        fallback_budget=budget_pair(params.pop("fallback_budget")),
        prune=params.pop("do_prune"),
        **params,
    )


def refuse_tflite(model: Path, profile: Profile, output: Path) -> None:
    """A .tflite file (by its flatbuffer identifier, or its name if unreadable) is for import."""
    try:
        with model.open("rb") as fh:
            tflite = fh.read(8)[4:8] == b"TFL3"
    except OSError:
        tflite = model.suffix == ".tflite"
    if tflite:
        raise click.ClickException(
            f"{model} is a TFLite model, which convert does not take (it starts from Keras); "
            f"bring it with: edgegap import {model} --profile {profile.name} --output {output}"
        )
