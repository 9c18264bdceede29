"""`edgegap import`: bring an existing .tflite model as a signed bundle (no TensorFlow needed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from converter.console import console
from converter.params import FLOAT_LIST, PROFILE, bundle_options
from firmware_profiles import Profile

logger = logging.getLogger(__name__)

DECODERS = ("ssd_postprocess", "ssd_raw", "yolo", "classification", "tensor")


def _decoder_options(fn: Any) -> Any:
    """The decoder parameters, each written to manifest.extra only when given."""
    options = [
        click.option("--box-coding", type=click.Choice(["yxhw", "xywh"]),
                     help="ssd_raw: yxhw (TF OD API, exp sizes) or xywh (MediaPipe-style, linear) [yxhw]."),
        click.option("--box-scales", type=FLOAT_LIST,
                     help="ssd_raw: 4 divisors in the coding's order [yxhw: 10,10,5,5; xywh: 1,1,1,1, "
                     "or the input size with --box-units input]."),
        click.option("--box-units", type=click.Choice(["anchor", "input", "normalized", "pixels"]),
                     help="ssd_raw xywh: offsets in anchor sizes or input pixels [anchor]; "
                     "yolo: boxes normalized or in input pixels [normalized]."),
        click.option("--extra-values", type=click.IntRange(min=0),
                     help="ssd_raw: values after the 4 box values (keypoint x, y pairs)."),
        click.option("--score-activation", type=click.Choice(["sigmoid", "softmax", "none"]),
                     help="ssd_raw: how raw scores become probabilities [sigmoid]."),
        click.option("--background-class/--no-background-class", default=None,
                     help="ssd_raw: score 0 is a background class [--background-class]."),
        click.option("--anchors", "anchors_npy", type=click.Path(path_type=Path, dir_okay=False),
                     help="ssd_raw: .npy file of [A, 4] anchors, carried in the manifest."),
        click.option("--anchor-order", type=click.Choice(["yxhw", "xywh"]), default="yxhw",
                     show_default=True, help="ssd_raw: column order of --anchors (centers, sizes)."),
        click.option("--anchor-generator", type=click.Path(path_type=Path, dir_okay=False),
                     help="ssd_raw: JSON or YAML file of SSD anchor-generator parameters."),
        click.option("--boxes-output", metavar="NAME",
                     help="ssd_raw: the output holding the box encodings [by name or width]."),
        click.option("--iou-threshold", type=click.FloatRange(0, 1),
                     help="ssd_raw, yolo: NMS IoU threshold."),
        click.option("--transposed/--no-transposed", default=None,
                     help="yolo: [1, 4 + C, N] (Ultralytics export) or [1, N, 4 + C] [from the shape]."),
        click.option("--box-format", type=click.Choice(["cxcywh", "xyxy"]),
                     help="yolo: box columns [cxcywh]."),
        click.option("--objectness", is_flag=True, default=None,
                     help="yolo: a 5th column multiplies the class scores."),
        click.option("--full-max-values", type=click.IntRange(0, 1_000_000),
                     help="tensor: outputs with at most this many values go out in full [256]."),
        click.option("--frame-max-values", type=click.IntRange(0, 1_000_000),
                     help="tensor: at most this many values in full per frame [4096]."),
        click.option("--pad-value", type=click.IntRange(0, 255),
                     help="--resize letterbox: pixel value of the bars [0; Ultralytics: 114]."),
        click.option("--label-offset", type=click.IntRange(min=0),
                     help="Labels-file line of class 0 (1 when the file starts with a background)."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


EXTRA_KEYS = (
    "box_coding", "box_scales", "box_units", "extra_values", "score_activation",
    "background_class", "iou_threshold", "transposed", "box_format", "objectness",
    "full_max_values", "frame_max_values", "label_offset", "pad_value",
)  # fmt: skip


@click.command("import")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--profile", type=PROFILE, required=True, help="Shipped profile NAME or a .yaml file."
)
@click.option(
    "--decoder", type=click.Choice(DECODERS), help="The decoder [recognised from the outputs]."
)
@click.option(
    "--labels", type=click.Path(path_type=Path), help="Text file, one class label per line."
)
@click.option(
    "--mean",
    type=FLOAT_LIST,
    help="Pixel mean, one value or one per channel [integer input: "
    "its quantization; float input: 0].",
)
@click.option(
    "--std",
    type=FLOAT_LIST,
    help="Pixel std; inputs are (pixel - mean) / std [integer input: "
    "its quantization; float input: 255].",
)
@click.option(
    "--color-order",
    type=click.Choice(["rgb", "bgr", "gray"]),
    help="Channel order the model expects [gray for 1 channel, else rgb].",
)
@click.option(
    "--resize",
    type=click.Choice(["stretch", "letterbox"]),
    default="stretch",
    show_default=True,
    help="How frames are fitted to the model input.",
)
@_decoder_options
@bundle_options
@click.option(
    "--latency-runs",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Invokes timed for the latency gate.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Bundle directory: model.tflite, manifest.json and report.json.",
)
def import_cmd(
    model: Path, profile: Profile, decoder: str | None, labels: Path | None,
    mean: list[float] | None, std: list[float] | None, color_order: str | None, resize: str,
    anchors_npy: Path | None, anchor_order: str, anchor_generator: Path | None,
    boxes_output: str | None, sign_key: Path | None, name: str | None, version: int | None, force: bool,
    latency_runs: int, output: Path, **params: Any,
) -> None:  # fmt: skip
    """Make a signed bundle from an existing .tflite MODEL: no TensorFlow needed.

    The input and outputs, with their quantization, are read from the model. The layout is
    recognised (TFLite_Detection_PostProcess outputs, YOLO [1, N, 4+C] or transposed, a
    classifier, else tensor) and said; where it cannot be told, --decoder is asked for.
    Golden outputs are recorded here, and the profile's gates (ops, size, arena, latency) checked.

    \b
    Examples:
      edgegap import ssd_mobilenet.tflite --profile raspberry-pi-4 --labels coco.txt \\
          --label-offset 1 --sign-key keys/edgegap.key --output bundle/
      edgegap import yolov8n_float32.tflite --profile x86-avx2 --labels coco.txt --output bundle/
      edgegap import face_detector.tflite --profile raspberry-pi-5 --decoder ssd_raw \\
          --box-coding xywh --box-units input --extra-values 12 --no-background-class \\
          --anchor-generator anchors.yaml --mean 127.5 --std 127.5 --output bundle/
      edgegap import landmarks.tflite --profile x86-avx2 --decoder tensor --output bundle/
    """
    from agent.bundle.manifest import ColorOrder, Decoder, ResizeMode
    from converter.import_report import render
    from converter.importing import ImportOptions, import_model

    extra = {k: v for k, v in params.items() if k in EXTRA_KEYS and v is not None}
    extra.update(_anchors(anchors_npy, anchor_order, anchor_generator))
    opts = ImportOptions(
        model=model, profile=profile, output=output,
        decoder=Decoder(decoder) if decoder else None, extra=extra, labels=labels, mean=mean,
        std=std, color_order=ColorOrder(color_order) if color_order else None,
        resize=ResizeMode(resize), boxes_output=boxes_output, sign_key=sign_key, name=name,
        version=version, force=force, latency_runs=latency_runs,
    )  # fmt: skip
    with console.status("importing: reading the model, golden outputs, gates"):
        result = import_model(opts)
    console.print(render(result))
    if not result.passed:
        if not force:
            raise click.ClickException(
                f"{result.reason} (no bundle written; --force writes it marked failed)"
            )
        console.print(f"[bold red]bundle written with failed gates[/] ({result.reason})")


def _anchors(npy: Path | None, order: str, generator: Path | None) -> dict[str, Any]:
    """manifest.extra's anchors: a .npy array carried as anchor_data, or generator parameters."""
    import numpy as np

    from agent.decoders.raw_boxes import anchor_data

    if npy is not None and generator is not None:
        raise click.UsageError("give --anchors or --anchor-generator, not both")
    if npy is not None:
        try:
            with npy.open("rb") as f:
                if f.read(6) != b"\x93NUMPY":
                    raise click.BadParameter(
                        f"{npy} is not a .npy file (anchor-generator parameters go in "
                        "--anchor-generator)",
                        param_hint="--anchors",
                    )
            arr = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"{npy}: {exc}", param_hint="--anchors") from exc
        if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
            raise click.BadParameter(
                f"{npy} holds {list(arr.shape)}; anchors are [A, 4] finite numbers",
                param_hint="--anchors",
            )
        arr = arr.astype(np.float32)
        return {"anchor_data": anchor_data(arr[:, [1, 0, 3, 2]] if order == "xywh" else arr)}
    if generator is not None:
        import yaml

        try:
            text = generator.read_text(encoding="utf-8")
            spec = json.loads(text) if generator.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise click.BadParameter(
                f"{generator}: {' '.join(str(exc).split())}", param_hint="--anchor-generator"
            ) from exc
        if not isinstance(spec, dict):
            raise click.BadParameter(
                f"{generator} is not a mapping", param_hint="--anchor-generator"
            )
        return {"anchor_generator": spec}
    return {}
