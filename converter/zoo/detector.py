"""A small SSD detector in Keras 3: a MobileNetV2-style backbone, depthwise-separable heads on
three feature maps (strides 8, 16, 32), sigmoid focal loss plus smooth-L1 box loss.

The model is a plain functional Keras model with two outputs, `box_encodings` [N, A, 4] and
`class_logits` [N, A, C] (no background column), so it can be pruned, exported and converted.
Its anchors, classes and NMS settings live in the sidecar (converter/tasks/detector_config.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from agent.geometry.anchors import generate_anchors
from converter.evaluation import MapResult, coco_map
from converter.tasks.detector_config import DetectorConfig
from converter.tasks.ssd import detections_from_raw
from converter.zoo.detection_data import Sample
from converter.zoo.targets import match

logger = logging.getLogger(__name__)

BOX_OUTPUT = "box_encodings"
CLASS_OUTPUT = "class_logits"
_PRIOR = 0.01  # initial foreground probability of every anchor, as in RetinaNet
BN_MOMENTUM = 0.9  # short training: moving statistics must keep up with the weights
# MobileNetV2 stages (expansion, channels at width 1, repeats, stride), with fewer repeats.
_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 3, 2),
    (6, 96, 2, 1),
    (6, 160, 2, 2),
    (6, 320, 1, 1),
)


def _channels(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


def _conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str, act: bool = True) -> Any:
    x = layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if act else x


def _dw_bn(x: Any, stride: int, name: str) -> Any:
    x = layers.DepthwiseConv2D(
        3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_dw_relu")(x)


def build_detector(cfg: DetectorConfig) -> keras.Model:
    """The functional model. Heads read the expansion layers in front of the stride-16 and
    stride-32 stages (as SSDLite does) and the final 1x1 layer."""
    s = cfg.input_size
    if s % 32:
        raise ValueError(f"input size {s} must be a multiple of 32")
    if cfg.anchors.feature_maps != (s // 8, s // 16, s // 32):
        raise ValueError(
            f"anchor feature maps {cfg.anchors.feature_maps} do not fit input size {s}"
        )
    inputs = keras.Input((s, s, 3), name="images")
    x = _conv_bn(inputs, _channels(32 * cfg.width), 3, 2, "stem")
    taps = []
    block = 0
    for t, c, n, stride in _STAGES:
        for i in range(n):
            name = f"block{block}"
            st = stride if i == 0 else 1
            cin = x.shape[-1]
            y = x
            if t != 1:
                y = _conv_bn(y, cin * t, 1, 1, f"{name}_expand")
                if st == 2 and y.shape[1] in (s // 8, s // 16):
                    taps.append(y)
            y = _dw_bn(y, st, name)
            y = _conv_bn(y, _channels(c * cfg.width), 1, 1, f"{name}_project", act=False)
            x = layers.Add(name=f"{name}_add")([x, y]) if st == 1 and cin == y.shape[-1] else y
            block += 1
    taps.append(_conv_bn(x, 256, 1, 1, "top"))
    k, num_classes = cfg.anchors.per_cell, cfg.num_classes
    boxes: list[Any] = []
    logits: list[Any] = []
    bias = keras.initializers.Constant(-math.log((1 - _PRIOR) / _PRIOR))
    for level, feat in enumerate(taps):
        for kind, out in (("box", boxes), ("cls", logits)):
            y = _dw_bn(feat, 1, f"head{level}_{kind}")
            width = 4 if kind == "box" else num_classes
            init = "zeros" if kind == "box" else bias
            y = layers.Conv2D(k * width, 1, bias_initializer=init, name=f"head{level}_{kind}_out")(
                y
            )
            out.append(layers.Reshape((-1, width), name=f"head{level}_{kind}_flat")(y))
    box = layers.Concatenate(axis=1, name=BOX_OUTPUT)(boxes)
    cls = layers.Concatenate(axis=1, name=CLASS_OUTPUT)(logits)
    model = keras.Model(inputs, [box, cls], name="edgegap_ssd")
    if box.shape[1] != cfg.anchors.count:
        raise ValueError(f"model has {box.shape[1]} anchors, the anchor grid {cfg.anchors.count}")
    return model


def box_loss(y_true: Any, y_pred: Any) -> Any:
    """Smooth L1 over positive anchors, normalized by their number. y_true: encodings + flag."""
    pos = y_true[..., 4]
    diff = ops.abs(y_true[..., :4] - y_pred)
    l1 = ops.sum(ops.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5), axis=-1)
    return ops.sum(l1 * pos) / ops.maximum(ops.sum(pos), 1.0)


def focal_loss(y_true: Any, y_pred: Any, alpha: float = 0.25, gamma: float = 2.0) -> Any:
    """Sigmoid focal loss over all non-ignored anchors, normalized by the positives.
    y_true: one-hot classes (zeros for background) + a weight column (0 = ignored)."""
    target, weight = y_true[..., :-1], y_true[..., -1:]
    ce = ops.maximum(y_pred, 0.0) - y_pred * target + ops.log1p(ops.exp(-ops.abs(y_pred)))
    p = ops.sigmoid(y_pred)
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    loss = alpha_t * ops.power(1.0 - p_t, gamma) * ce * weight
    return ops.sum(loss) / ops.maximum(ops.sum(target), 1.0)


def normalize(images: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """uint8 RGB pixels -> model input."""
    return (images.astype(np.float32) - cfg.mean) / cfg.std


class TrainingData(keras.utils.PyDataset):
    """Batches of normalized images with anchor targets; horizontal flips as augmentation."""

    def __init__(self, images: np.ndarray, boxes: list[np.ndarray], classes: list[np.ndarray],
                 cfg: DetectorConfig, batch_size: int, seed: int) -> None:  # fmt: skip
        super().__init__()
        self.images, self.boxes, self.classes = images, boxes, classes
        self.cfg, self.batch_size = cfg, batch_size
        self.anchors = generate_anchors(cfg.anchors)
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))

    def __getitem__(self, i: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.images[idx].copy()
        box_t, cls_t = [], []
        for j, k in enumerate(idx):
            b = self.boxes[k].copy()
            if self.rng.random() < 0.5:
                x[j] = x[j, :, ::-1]
                b[:, [1, 3]] = 1.0 - b[:, [3, 1]]
            bt, ct = match(
                self.anchors, b, self.classes[k], self.cfg.num_classes, self.cfg.nms.coder
            )
            box_t.append(bt)
            cls_t.append(ct)
        return normalize(x, self.cfg), (np.stack(box_t), np.stack(cls_t))


@dataclass
class TrainResult:
    model: keras.Model
    seconds: float
    history: dict[str, list[float]]


class _Progress(keras.callbacks.Callback):
    def __init__(
        self,
        on_batch: Callable[[int, int, float], None],
        on_epoch: Callable[[int, dict[str, float]], None],
    ) -> None:
        super().__init__()
        self.on_batch, self.on_epoch = on_batch, on_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self.on_batch(self.epoch, batch, float((logs or {}).get("loss", float("nan"))))

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.on_epoch(epoch, {k: float(v) for k, v in (logs or {}).items()})


def train(
    cfg: DetectorConfig,
    train_samples: list[Sample],
    epochs: int,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 4e-3,
    on_batch: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train from scratch with Adam and a warm-up + cosine schedule; deterministic given the seed."""
    keras.utils.set_random_seed(seed)
    model = build_detector(cfg)
    images = np.stack([s.image for s in train_samples])
    data = TrainingData(
        images,
        [s.boxes for s in train_samples],
        [s.classes for s in train_samples],
        cfg,
        batch_size,
        seed,
    )
    steps = len(data) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate * 0.05,
        decay_steps=max(1, steps - steps // 20),
        warmup_target=learning_rate,
        warmup_steps=max(1, steps // 20),
        alpha=0.02,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, clipnorm=10.0),
        loss={BOX_OUTPUT: box_loss, CLASS_OUTPUT: focal_loss},
    )
    callbacks = [
        _Progress(on_batch or (lambda e, b, loss: None), on_epoch or (lambda e, logs: None))
    ]
    start = time.monotonic()
    hist = model.fit(data, epochs=epochs, verbose=0, callbacks=callbacks, shuffle=False)
    return TrainResult(
        model,
        time.monotonic() - start,
        {k: [float(v) for v in vals] for k, vals in hist.history.items()},
    )


def predict_raw(
    model: keras.Model, x: np.ndarray, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Box encodings (N, A, 4) and class logits (N, A, C) for normalized inputs."""
    box, logits = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(box), np.asarray(logits)


def evaluate_keras(model: keras.Model, cfg: DetectorConfig, samples: list[Sample]) -> MapResult:
    """mAP of the float Keras model on samples, decoded as the exported model decodes."""
    x = normalize(np.stack([s.image for s in samples]), cfg)
    dets = detections_from_raw(*predict_raw(model, x), cfg)
    return coco_map([s.boxes for s in samples], [s.classes for s in samples], dets, cfg.num_classes)
