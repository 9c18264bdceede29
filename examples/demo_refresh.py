"""The demo's model refresh: the reference detector fine-tuned a little more on fresh data.

A real refresh retrains on what the cameras saw last week; here the fresh data are images of the
generated dataset that the committed weights never saw (another seed). Only the detection heads
are trained, a few steps at a small learning rate, so it takes seconds on a CPU and the accuracy
stays where it was: the point is a genuinely new model (new weights, new sha256) to ship.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo_kit import Demo, console, edgegap, heading

from converter.loading import quiet_native_stderr

logger = logging.getLogger(__name__)

FRESH_SEED = 1  # the committed weights were trained on seed 0


@dataclass(frozen=True)
class Refreshed:
    model: Path
    images: int
    steps: int
    mean_loss: float
    seconds: float


def finetune(
    source: Path,
    output: Path,
    images: int = 128,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    on_step: Callable[[int, int, float], None] | None = None,
) -> Refreshed:
    """Fine-tune the heads of the detector at source on `images` fresh generated images, one
    epoch; write output (.keras) and its sidecar (the training record plus this fine-tune)."""
    import keras

    from converter.loading import import_tf
    from converter.tasks.detector_config import read_sidecar, write_sidecar
    from converter.zoo.detection_data import make_sample, to_arrays
    from converter.zoo.detector import TrainingData
    from converter.zoo.training import save_weights_only_model

    tf = import_tf()
    start = time.monotonic()
    cfg, doc = read_sidecar(source)
    model = keras.models.load_model(source, compile=False)
    for layer in model.layers:  # the backbone stays as it is; BatchNorm statistics too
        layer.trainable = layer.name.startswith("head")
    samples = [make_sample("train", i, FRESH_SEED, cfg.input_size) for i in range(images)]
    data = TrainingData(*to_arrays(samples), cfg, batch_size, FRESH_SEED)
    keras.utils.set_random_seed(FRESH_SEED)
    step = _train_step(tf, model, keras.optimizers.Adam(learning_rate, clipnorm=10.0))
    losses = []
    for i in range(len(data)):
        x, (box_t, cls_t) = data[i]
        losses.append(float(step(x, box_t, cls_t)))
        if on_step is not None:
            on_step(i + 1, len(data), losses[-1])
    save_weights_only_model(model, cfg, output)
    record = {
        "training": doc.get("training", {}),
        "finetune": {"from": source.name, "images": images, "seed": FRESH_SEED, "steps": len(data),
                     "learning_rate": learning_rate, "trained": "heads"},
    }  # fmt: skip
    write_sidecar(output, cfg, record)
    seconds = time.monotonic() - start
    return Refreshed(output, images, len(data), sum(losses) / len(losses), seconds)


def _train_step(tf: Any, model: Any, optimizer: Any) -> Callable[[Any, Any, Any], Any]:
    """One eager step with the detector's own loss (no graph tracing: a handful of steps is
    quicker run eagerly than traced first)."""
    from converter.zoo.detector import box_loss, focal_loss

    variables = model.trainable_variables

    def step(x: Any, box_t: Any, cls_t: Any) -> Any:
        with tf.GradientTape() as tape:
            box, cls = model(x, training=False)
            loss = tf.reduce_mean(box_loss(box_t, box)) + tf.reduce_mean(focal_loss(cls_t, cls))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return step


def step_refresh(demo: Demo) -> None:
    """Fine-tune the detector on fresh data and convert it, signed, as version 2 (not published
    yet: the device still serves v1)."""
    heading("9. A refreshed model: the detector fine-tuned on fresh data, converted as v2")
    source = demo.files["detector"]
    output = demo.out / "detector-v2.keras"
    images = 64 if demo.quick else 128
    console.print(
        f"fine-tuning the heads of {source.name} on {images} generated images it never saw "
        f"(seed {FRESH_SEED}), one epoch"
    )
    with quiet_native_stderr():
        done = finetune(source, output, images=images)
    console.print(
        f"wrote {output}: {done.steps} steps of {done.images // done.steps} images in "
        f"{done.seconds:.1f} s, mean loss {done.mean_loss:.4f}"
    )
    bundle = demo.out / "bundles" / "detector-v2-x86-avx2"
    edgegap(
        "convert", output, "--profile", "x86-avx2",
        "--calibration", demo.out / "detection" / "calibration" / "images",
        "--validation", demo.files["detection_test"], "--sign-key", demo.files["private_key"],
        "--name", "detector", "--version", 2, "--output", bundle,
    )  # fmt: skip
    demo.refreshed = bundle
