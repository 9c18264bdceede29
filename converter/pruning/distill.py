"""Fine-tuning a pruned student against the original model as teacher.

Loss = alpha * task loss (when labels exist) + (1 - alpha) * distillation loss on the teacher's
outputs; with no labels, distillation alone. Early stopping on a validation split keeps the best
weights (and, if asked, writes them as a checkpoint).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.console import progress
from converter.pruning.importance import default_loss

logger = logging.getLogger(__name__)

FREEZE_BN_BELOW_STEPS = 500  # BatchNorm momentum 0.99 needs a few hundred steps to settle


@dataclass
class FineTuneResult:
    epochs_run: int
    best_epoch: int  # 0 when no epoch improved on the starting point
    best_val_loss: float
    start_val_loss: float
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def _as_list(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _is_probability(y: np.ndarray) -> bool:
    """Teacher outputs that are distributions over the last axis get a cross-entropy target."""
    if y.ndim < 2 or y.shape[-1] < 2 or y.min() < 0 or y.max() > 1:
        return False
    return bool(np.allclose(y.sum(-1), 1.0, atol=1e-3))


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction)) if n >= 10 else 0
    return order[n_val:], order[:n_val]


def _take(labels: Any, idx: np.ndarray) -> Any:
    if labels is None:
        return None
    if isinstance(labels, (list, tuple)):
        return [np.asarray(y)[idx] for y in labels]
    return np.asarray(labels)[idx]


@dataclass
class _Batches:
    """The student, its inputs with the teacher's outputs (and labels), and the loss between them."""

    student: Any
    x: np.ndarray
    teacher_out: list[np.ndarray]
    labels: Any
    batch_size: int
    loss_fn: Callable[[list[Any], list[Any], Any], Any]

    def targets(self, idx: np.ndarray) -> tuple[list[Any], Any]:
        return [t[idx] for t in self.teacher_out], _take(self.labels, idx)

    def evaluate(self, eval_idx: np.ndarray) -> float:
        total, count = 0.0, 0
        for start in range(0, len(eval_idx), self.batch_size):
            idx = eval_idx[start : start + self.batch_size]
            outs = _as_list(self.student(self.x[idx], training=False))
            loss = self.loss_fn(outs, *self.targets(idx))
            total += float(loss) * len(idx)
            count += len(idx)
        return total / max(count, 1)


def _loss_function(
    teacher_out: list[np.ndarray],
    task: Callable[[list[Any], Any], Any],
    w_task: float,
    distill_loss: Callable[[list[Any], list[Any]], Any] | None,
) -> Callable[[list[Any], list[Any], Any], Any]:
    """w_task * task loss + (1 - w_task) * distillation: cross-entropy toward teacher outputs that
    are distributions, squared error scaled by the teacher's variance otherwise."""
    from keras import ops

    probs = [_is_probability(t) for t in teacher_out]
    scale = [1.0 if p else float(np.var(t)) + 1e-6 for t, p in zip(teacher_out, probs, strict=True)]

    def loss_fn(outs: list[Any], targets: list[Any], yb: Any) -> Any:
        d: Any = 0.0
        if distill_loss is not None:
            d = distill_loss(outs, targets)
        else:
            for o, t, p, s in zip(outs, targets, probs, scale, strict=True):
                if p:
                    d += ops.mean(ops.categorical_crossentropy(t, o))
                else:
                    d += ops.mean(ops.square(o - t)) / s
        if w_task:
            return w_task * task(outs, yb) + (1.0 - w_task) * d
        return d

    return loss_fn


def _freeze_batchnorm(student: Any) -> list[Any]:
    """Keep the statistics the filters came with; the layers frozen, to thaw afterwards."""
    import keras

    frozen = []
    for layer in _all_layers(student):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            layer.trainable = False
            frozen.append(layer)
    return frozen


def _optimizer(schedule: str, learning_rate: float, total_steps: int) -> Any:
    import keras

    lr: Any = learning_rate
    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(1, total_steps), alpha=0.05
        )
    elif schedule != "constant":
        raise ValueError(f"unknown schedule {schedule!r}: cosine or constant")
    return keras.optimizers.Adam(lr)


def _train_step(batches: _Batches, optimizer: Any) -> Callable[[Any, list[Any], Any], Any]:
    """The step as a tf.function traced once: the optimizer's slots are made before (made on the
    first call, they had the step traced twice), and the trace is for any batch size (the last,
    smaller batch of an epoch had it traced again)."""
    import tensorflow as tf

    student, loss_fn = batches.student, batches.loss_fn
    variables = student.trainable_variables
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def step(xb: Any, targets: list[Any], yb: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(_as_list(student(xb, training=True)), targets, yb)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    traced: list[bool] = []

    def train_step(xb: Any, targets: list[Any], yb: Any) -> Any:
        if not traced:
            step.get_concrete_function(*_any_batch_size((xb, targets, yb)))
            traced.append(True)
        return step(xb, targets, yb)

    return train_step


def _any_batch_size(args: Any) -> Any:
    import tensorflow as tf

    def spec(a: Any) -> Any:
        if a is None:
            return None
        a = np.asarray(a)
        return tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype))

    return tf.nest.map_structure(spec, args)


@dataclass
class _Run:
    """How the epochs run: how many, on which samples, when to stop, what to report and save."""

    epochs: int
    steps: int
    train_idx: np.ndarray
    eval_idx: np.ndarray
    patience: int
    checkpoint: Path | None
    after_step: Callable[[], None] | None
    label: str
    seed: int


def _fit(batches: _Batches, train_step: Callable[..., Any], run: _Run) -> FineTuneResult:
    """Train epoch by epoch, keeping the best weights on the evaluation samples; stop after
    `patience` epochs without improvement. The student ends with the best weights."""
    student, epochs, label = batches.student, run.epochs, run.label
    rng = np.random.default_rng(run.seed)
    best = batches.evaluate(run.eval_idx)
    best_weights = student.get_weights()
    result = FineTuneResult(0, 0, best, best, False)
    stale = 0
    with progress() as bar:
        task_id = bar.add_task(f"{label}: epoch 1/{epochs}", total=epochs * run.steps)
        for epoch in range(1, epochs + 1):
            losses = []
            for idx in _shuffled_batches(rng, run.train_idx, batches.batch_size):
                loss = train_step(batches.x[idx], *batches.targets(idx))
                if run.after_step is not None:
                    run.after_step()
                losses.append(float(loss))
                bar.update(task_id, advance=1)
            val = batches.evaluate(run.eval_idx)
            result.history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_loss": val})
            result.epochs_run = epoch
            bar.update(
                task_id,
                description=f"{label}: epoch {epoch}/{epochs} val {val:.4g} (best {min(best, val):.4g})",
            )
            logger.info("%s epoch %d: loss %.5g val %.5g", label, epoch, np.mean(losses), val)
            if val < best:
                best, stale, result.best_epoch = val, 0, epoch
                best_weights = student.get_weights()
                if run.checkpoint is not None:
                    student.save(run.checkpoint)
            else:
                stale += 1
                if stale >= run.patience:
                    result.stopped_early = epoch < epochs
                    break
    student.set_weights(best_weights)
    result.best_val_loss = best
    return result


def _shuffled_batches(
    rng: np.random.Generator, train_idx: np.ndarray, batch_size: int
) -> Iterator[np.ndarray]:
    order = rng.permutation(train_idx)
    for start in range(0, len(order), batch_size):
        yield np.sort(order[start : start + batch_size])


def distill(
    student: Any,
    teacher: Any,
    x: np.ndarray,
    labels: Any = None,
    *,
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    alpha: float = 0.5,
    val_fraction: float = 0.1,
    patience: int = 2,
    task_loss: Callable[[list[Any], Any], Any] | None = None,
    distill_loss: Callable[[list[Any], list[Any]], Any] | None = None,
    checkpoint: Path | None = None,
    after_step: Callable[[], None] | None = None,
    freeze_batchnorm: bool | None = None,
    schedule: str = "cosine",
    label: str = "fine-tune",
    seed: int = 0,
) -> FineTuneResult:
    """Train `student` in place toward `teacher` (and the labels, if any); restore its best weights.

    `distill_loss(student_outputs, teacher_outputs)` replaces the default distillation term.
    The learning rate follows a cosine decay over the planned steps (schedule="constant" keeps
    it). BatchNorm statistics are frozen when the fine-tune is too short to settle them (fewer
    than FREEZE_BN_BELOW_STEPS steps) unless freeze_batchnorm says otherwise."""
    teacher_out = [
        np.asarray(t) for t in _as_list(teacher.predict(x, batch_size=batch_size, verbose=0))
    ]
    w_task = alpha if labels is not None else 0.0
    loss_fn = _loss_function(teacher_out, task_loss or default_loss, w_task, distill_loss)
    train_idx, val_idx = _split(len(x), val_fraction, seed)
    steps = math.ceil(len(train_idx) / batch_size)
    if freeze_batchnorm is None:
        freeze_batchnorm = epochs * steps < FREEZE_BN_BELOW_STEPS
    frozen = _freeze_batchnorm(student) if freeze_batchnorm else []  # short fine-tunes
    optimizer = _optimizer(schedule, learning_rate, epochs * steps)
    batches = _Batches(student, x, teacher_out, labels, batch_size, loss_fn)
    eval_idx = val_idx if len(val_idx) else train_idx
    run = _Run(epochs, steps, train_idx, eval_idx, patience, checkpoint, after_step, label, seed)
    result = _fit(batches, _train_step(batches, optimizer), run)
    for layer in frozen:
        layer.trainable = True
    if checkpoint is not None and result.best_epoch:
        student.save(checkpoint)  # again, now with the BatchNorm layers trainable as they came
    return result


def _all_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        out.extend(_all_layers(layer) if hasattr(layer, "layers") else [layer])
    return out


def detection_distill_loss(
    box_index: int = 0, logits_index: int = 1
) -> Callable[[list[Any], list[Any]], Any]:
    """Distillation for an SSD-style detector with raw box encodings and sigmoid class logits:
    binary cross-entropy toward the teacher's class probabilities, plus squared error on the box
    encodings weighted by the teacher's confidence (background anchors' boxes do not matter)."""
    from keras import ops

    def loss(outs: list[Any], targets: list[Any]) -> Any:
        box_s, logit_s = outs[box_index], outs[logits_index]
        box_t, logit_t = targets[box_index], targets[logits_index]
        p_t = ops.sigmoid(logit_t)
        cls = ops.mean(ops.binary_crossentropy(p_t, logit_s, from_logits=True))
        w = ops.max(p_t, axis=-1)
        box = ops.sum(w * ops.mean(ops.square(box_s - box_t), axis=-1)) / (ops.sum(w) + 1e-6)
        return cls + box

    return loss
