"""Channel pruning, measured: MACs and int8 LiteRT latency of pruned models against dense ones.

Part 1, architectures (random weights): MobileNetV2 and ResNet50 at 30% and 50% of channels
removed. MACs ratio from the rebuilt models; latency from int8 TFLite models run in LiteRT, the
dense and pruned interpreters invoked round-robin and the median taken over many iterations.

Part 2, the reference detector (converter/zoo/weights/detector.keras with its sidecar): 50% of
channels removed in steps, each followed by fine-tuning with the detector's task loss plus
distillation against the dense model (--no-labels: distillation alone). Reported: MACs ratio
(goal <= 0.5), int8 latency ratio (goal <= 0.6) and the mAP@0.5 drop of the pruned float model
against the dense float model (goal <= 1.0 point). The fine-tune is also training: --control
gives the dense model the very same fine-tune, so the drop can be read against an equally
trained dense model too. Without the reference detector, part 2 prints "skipped" and why.

Usage:
  python benchmarks/pruning.py [--size 224] [--iterations 100] [--threads 1] [--skip-arch]
                               [--skip-detector] [--epochs 8] [--steps 2] [--train 4000] [--lr 2e-3] [--patience 2]
                               [--freeze-bn auto|yes|no] [--no-labels] [--control]
                               [--stages] [--round-to 1]

Ratios are printed last, absolute times beside them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.amx import WITHHOLD_HELP, amx_label, withhold_amx  # noqa: E402
from converter.pruning import count_macs, detection_distill_loss, make_plan, prune, rebuild  # noqa: E402
from converter.pruning.latency import interleaved_latency, to_int8_tflite  # noqa: E402

if TYPE_CHECKING:
    from converter.pruning import PruneReport
    from converter.tasks.detector_config import DetectorConfig
    from converter.zoo.detection_data import Sample

logger = logging.getLogger(__name__)

REFERENCE = ROOT / "converter" / "zoo" / "weights" / "detector.keras"
RATIOS = (0.3, 0.5)


def architectures(size: int, iterations: int, threads: int) -> list[str]:
    import keras

    lines = []
    builders = {
        "MobileNetV2": lambda: keras.applications.MobileNetV2(
            weights=None, input_shape=(size, size, 3)
        ),
        "ResNet50": lambda: keras.applications.ResNet50(weights=None, input_shape=(size, size, 3)),
    }
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (8, size, size, 3)).astype(np.float32)
    for name, build in builders.items():
        dense = build()
        flats, macs = [to_int8_tflite(dense, calib)], [count_macs(dense)]
        for r in RATIOS:
            plan = make_plan(dense, r)
            pruned = rebuild(plan)
            macs.append(count_macs(pruned))
            assert macs[-1] == plan.predicted_macs
            flats.append(to_int8_tflite(pruned, calib))
        ms = interleaved_latency(flats, threads=threads, iterations=iterations)
        print(
            f"{name} {size}x{size} int8, {threads} thread(s), {amx_label()}, median of {iterations} interleaved invokes:"
        )
        print(
            f"  dense         : {macs[0] / 1e6:8.1f} M MACs  {ms[0]:8.2f} ms  {len(flats[0]) / 1e6:6.2f} MB"
        )
        for r, m, t, f in zip(RATIOS, macs[1:], ms[1:], flats[1:], strict=True):
            print(
                f"  {r:.0%} removed   : {m / 1e6:8.1f} M MACs  {t:8.2f} ms  {len(f) / 1e6:6.2f} MB"
            )
        for r, m, t in zip(RATIOS, macs[1:], ms[1:], strict=True):
            lines.append(
                f"{name} {r:.0%} channels removed: MACs ratio {m / macs[0]:.3f}, int8 latency ratio {t / ms[0]:.3f}"
            )
    return lines


# --------------------------------------------------------------------------------------------------
# Reference detector


@dataclass
class DetectorData:
    """The reference detector's config and the generated train / test images for the run."""

    cfg: DetectorConfig
    train: list[Sample]
    test: list[Sample]
    x_train: np.ndarray
    targets: list[np.ndarray] | None
    task_loss: Callable[[list[Any], list[Any]], Any] | None


def detector_data(cfg: DetectorConfig, args: argparse.Namespace) -> DetectorData:
    """Generate the train and test images (timed) and, with labels, the fine-tune's targets."""
    from converter.zoo.detection_data import generate
    from converter.zoo.detector import normalize
    from converter.zoo.finetune import detection_targets, detection_task_loss

    size = cfg.input_size
    t0 = time.perf_counter()
    train = list(generate("train", args.train, size=size))
    test = list(generate("test", args.test, size=size))
    x_train = normalize(np.stack([s.image for s in train]), cfg)
    print(
        f"detector: {args.train} train / {args.test} test images at {size}px generated in {time.perf_counter() - t0:.0f} s"
    )
    if args.no_labels:
        return DetectorData(cfg, train, test, x_train, None, None)
    targets = detection_targets(cfg, [s.boxes for s in train], [s.classes for s in train])
    return DetectorData(cfg, train, test, x_train, targets, detection_task_loss)


def freeze_batchnorm(args: argparse.Namespace) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[args.freeze_bn]


def detector_name(round_to: int) -> str:
    return (
        f"detector 50% channels (rounded to x{round_to})"
        if round_to > 1
        else "detector 50% channels"
    )


def prune_detector(
    dense: Any, d: DetectorData, args: argparse.Namespace
) -> tuple[Any, PruneReport]:
    """Remove 50% of the channels in steps with fine-tunes between; print what was removed."""
    epochs, steps, labels = args.epochs, args.steps, not args.no_labels
    x_train, targets, task_loss = d.x_train, d.targets, d.task_loss
    t0 = time.perf_counter()
    freeze = freeze_batchnorm(args)
    pruned, report = prune(
        dense, 0.5, data=x_train, labels=targets, task_loss=task_loss, distill_loss=detection_distill_loss(),
        epochs=epochs, steps=steps, patience=args.patience, learning_rate=args.lr, freeze_batchnorm=freeze,
        round_to=args.round_to,
    )  # fmt: skip
    how = "task loss + distillation" if labels else "distillation alone"
    rounded = f", kept counts rounded to multiples of {args.round_to}" if args.round_to > 1 else ""
    print(f"detector: 50% of channels asked{rounded}: {report.channels_before - report.channels_after} of "
          f"{report.channels_before} prunable channels ({report.removed_fraction:.1%}) removed in {steps} step(s), "
          f"each fine-tuned {epochs} epoch(s) ({how}), {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print("  kept whole: " + ", ".join(f"{k.layer} ({k.reason})" for k in report.kept_whole))
    for i, ft in enumerate(report.fine_tune, 1):
        print(f"  fine-tune {i}: validation loss {ft.start_val_loss:.4g} -> {ft.best_val_loss:.4g}, "
              f"{ft.epochs_run} epoch(s), best {ft.best_epoch}")  # fmt: skip
    return pruned, report


def control(
    dense: Any, d: DetectorData, args: argparse.Namespace, name: str, map_pruned: float
) -> list[str]:
    """The dense model given the very same fine-tune: separates pruning from training."""
    from converter.zoo.detector import evaluate_keras

    epochs, steps = args.epochs, args.steps
    x_train, targets, task_loss = d.x_train, d.targets, d.task_loss
    freeze = freeze_batchnorm(args)
    t0 = time.perf_counter()
    tuned, _ = prune(  # task loss alone and no early stop: distillation toward itself is zero at the start
        dense, 0.0, data=x_train, labels=targets, task_loss=task_loss, alpha=1.0,
        epochs=epochs, steps=steps, patience=epochs, learning_rate=args.lr, freeze_batchnorm=freeze,
    )  # fmt: skip
    map_control = 100 * evaluate_keras(tuned, d.cfg, d.test).map50
    print(
        f"  control: dense model with the same fine-tune ({time.perf_counter() - t0:.0f} s): mAP@0.5 {map_control:6.2f}"
    )
    return [
        f"{name}: mAP@0.5 drop {map_control - map_pruned:+.2f} points vs dense float given the same fine-tune"
    ]


def detector(iterations: int, threads: int, args: argparse.Namespace) -> list[str]:
    if not REFERENCE.is_file():
        msg = f"detector: skipped: reference detector not found ({REFERENCE.relative_to(ROOT)})"
        print(msg)
        return [msg]
    import keras

    from converter.tasks.detector_config import read_sidecar
    from converter.zoo.detector import evaluate_keras

    dense = keras.models.load_model(REFERENCE, compile=False)
    cfg, _ = read_sidecar(REFERENCE)
    size = cfg.input_size
    d = detector_data(cfg, args)
    pruned, report = prune_detector(dense, d, args)
    name = detector_name(args.round_to)
    map_dense = 100 * evaluate_keras(dense, cfg, d.test).map50
    map_pruned = 100 * evaluate_keras(pruned, cfg, d.test).map50
    control_line = control(dense, d, args, name, map_pruned) if args.control else []
    calib = d.x_train[:8]
    if args.stages:
        stage_latency(dense, pruned, calib, iterations, threads)
    flats = [to_int8_tflite(dense, calib), to_int8_tflite(pruned, calib)]
    ms = interleaved_latency(flats, threads=threads, iterations=iterations)
    print(f"detector {size}x{size} int8 (raw head outputs; post-processing excluded), {threads} thread(s), {amx_label()}, "
          f"median of {iterations} interleaved invokes; mAP@0.5 (COCO 101-point) of the float models on {args.test} test images:")  # fmt: skip
    print(
        f"  dense : {report.before.macs / 1e6:8.1f} M MACs  {ms[0]:8.2f} ms  mAP@0.5 {map_dense:6.2f}"
    )
    print(
        f"  pruned: {report.after.macs / 1e6:8.1f} M MACs  {ms[1]:8.2f} ms  mAP@0.5 {map_pruned:6.2f}"
    )
    return [
        f"{name}: MACs ratio {report.macs_ratio:.3f} (goal <= 0.5)",
        f"{name}: int8 latency ratio {ms[1] / ms[0]:.3f} (goal <= 0.6)",
        f"{name}: mAP@0.5 drop {map_dense - map_pruned:+.2f} points vs dense float (goal <= 1.0)",
        *control_line,
    ]


# The reference detector's stage ends: the stem, then the last block of each MobileNetV2 stage.
STAGE_ENDS = ("stem_relu", "block0_project_bn", "block2_add", "block5_add", "block8_add",
              "block10_add", "block12_add", "block13_project_bn", "top_relu")  # fmt: skip


def stage_latency(
    dense: Any, pruned: Any, calib: np.ndarray, iterations: int, threads: int
) -> None:
    """Where the int8 time goes: each model cut after every stage, converted and timed; a stage's
    cost is the difference between successive cuts. Shows which stages pruning speeds up."""
    import keras

    cuts = [n for n in STAGE_ENDS if n in {layer.name for layer in dense.layers}]
    cuts = [n for n in cuts if n in {layer.name for layer in pruned.layers}]
    flats = []
    for name in cuts:
        for model in (dense, pruned):
            sub = keras.Model(model.inputs, model.get_layer(name).output)
            flats.append(to_int8_tflite(sub, calib))
    ms = interleaved_latency(flats, threads=threads, iterations=iterations)
    print(f"detector stages (int8, {threads} thread(s), median of {iterations} interleaved invokes of "
          "models cut after each stage; a stage's cost is the difference between cuts):")  # fmt: skip
    print(
        f"  {'stage ends at':20s} {'output (dense)':>16s} {'dense ms':>9s} {'pruned ms':>9s} {'ratio':>6s}"
    )
    prev = (0.0, 0.0)
    for i, name in enumerate(cuts):
        d, p = ms[2 * i] - prev[0], ms[2 * i + 1] - prev[1]
        shape = "x".join(str(v) for v in dense.get_layer(name).output.shape[1:])
        print(
            f"  {name:20s} {shape:>16s} {d:9.3f} {p:9.3f} {p / d if d > 0 else float('nan'):6.2f}"
        )
        prev = (ms[2 * i], ms[2 * i + 1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-arch", action="store_true")
    ap.add_argument("--skip-detector", action="store_true")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument(
        "--lr", type=float, default=2e-3, help="Fine-tune learning rate (cosine decay)."
    )
    ap.add_argument(
        "--patience",
        type=int,
        default=2,
        help="Early stop after this many epochs without improvement.",
    )
    ap.add_argument("--freeze-bn", choices=["auto", "yes", "no"], default="no")
    ap.add_argument("--no-labels", action="store_true", help="Fine-tune by distillation alone.")
    ap.add_argument(
        "--control", action="store_true", help="Also fine-tune the dense model the same way."
    )
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--stages", action="store_true", help="Also time the detector stage by stage.")
    ap.add_argument(
        "--round-to", type=int, default=1, help="Round kept channel counts to multiples of this."
    )
    ap.add_argument("--withhold-amx", action="store_true", help=WITHHOLD_HELP)
    args = ap.parse_args()
    if args.withhold_amx:
        withhold_amx()
    # The fine-tune's per-epoch lines go to stderr, so a long run written to a log shows progress.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("converter.pruning").setLevel(logging.INFO)
    lines = []
    if not args.skip_arch:
        lines += architectures(args.size, args.iterations, args.threads)
    if not args.skip_detector:
        lines += detector(args.iterations, args.threads, args)
    print()
    print("ratios (pruned/dense):")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
