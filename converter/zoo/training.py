"""The reference detector's recipe, and the training run behind `edgegap zoo train-detector`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.geometry.anchors import AnchorConfig
from converter.evaluation import MapResult
from converter.tasks.detector_config import DetectorConfig, write_sidecar
from converter.zoo.detection_data import CLASSES, DATASET_ID, make_sample

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    input_size: int = 224
    width: float = 0.5
    epochs: int = 16
    train_count: int = 4000
    batch_size: int = 16
    learning_rate: float = 3e-3

    def config(self) -> DetectorConfig:
        return DetectorConfig(input_size=self.input_size, width=self.width, classes=CLASSES,
                              anchors=AnchorConfig.for_input(self.input_size))  # fmt: skip


RECIPE = Recipe()


@dataclass
class TrainOutcome:
    model_path: Path
    sidecar: Path
    val: MapResult
    train_seconds: float
    params: int


def train_reference(
    output: Path,
    epochs: int | None = None,
    seed: int = 0,
    train_count: int | None = None,
    val_count: int = 300,
    recipe: Recipe = RECIPE,
    on_sample: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[int, dict[str, float], float], None] | None = None,
) -> TrainOutcome:
    """Generate data, train, score on the validation split, and write model + sidecar."""
    from converter.zoo.detector import evaluate_keras, train

    epochs = epochs or recipe.epochs
    train_count = train_count or recipe.train_count
    cfg = recipe.config()
    train_samples, val_samples = [], []
    for i in range(train_count):
        train_samples.append(make_sample("train", i, seed, cfg.input_size))
        if on_sample and i % 50 == 0:
            on_sample(i)
    for i in range(val_count):
        val_samples.append(make_sample("val", i, seed, cfg.input_size))
    if on_sample:
        on_sample(train_count + val_count)
    steps_per_epoch = train_count // recipe.batch_size
    if on_start:
        on_start(steps_per_epoch * epochs)
    started = time.monotonic()

    def batch_done(epoch: int, batch: int, loss: float) -> None:
        if on_batch:
            on_batch(epoch * steps_per_epoch + batch + 1, loss)

    def epoch_done(epoch: int, logs: dict[str, float]) -> None:
        if on_epoch:
            on_epoch(epoch, logs, time.monotonic() - started)

    result = train(cfg, train_samples, epochs, seed=seed, batch_size=recipe.batch_size,
                   learning_rate=recipe.learning_rate, on_batch=batch_done, on_epoch=epoch_done)  # fmt: skip
    val = evaluate_keras(result.model, cfg, val_samples)
    output = Path(output)
    save_weights_only_model(result.model, cfg, output)
    record = {
        "training": {**asdict(recipe), "epochs": epochs, "train_count": train_count, "seed": seed,
                     "dataset": DATASET_ID, "seconds": round(result.seconds, 1),
                     "command": f"edgegap zoo train-detector --output {output.name} --epochs {epochs} "
                                f"--seed {seed} --train-count {train_count} --input-size {recipe.input_size} "
                                f"--width {recipe.width}"},
        "metrics": {"val_map50": round(val.map50, 4), "val_map50_95": round(val.map50_95, 4), "val_images": val_count},
    }  # fmt: skip
    sidecar = write_sidecar(output, cfg, record)
    return TrainOutcome(output, sidecar, val, result.seconds, int(result.model.count_params()))


def save_weights_only_model(model: object, cfg: DetectorConfig, output: Path) -> None:
    """Save the model without its optimizer state: an uncompiled twin with the trained weights."""
    from converter.zoo.detector import build_detector

    clean = build_detector(cfg)
    clean.set_weights(model.get_weights())  # type: ignore[attr-defined]
    clean.save(output)
