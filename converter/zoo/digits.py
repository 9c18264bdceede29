"""A small CNN trained on scikit-learn's handwritten digits: real data that ships in a wheel.

Used by the demo, the tests and the conversion benchmark. The 8x8 digit scans are scaled to
0..255 gray pixels and resized to 16x16 with the converter's own resize, so images written to
disk and read back by `edgegap convert` give exactly the training inputs. Seeded; trains in seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle.manifest import ResizeMode

logger = logging.getLogger(__name__)

DIGITS_SIZE = 16
CLASS_NAMES = [str(i) for i in range(10)]


@dataclass
class DigitsData:
    """uint8 gray pixels (N, H, W, 1) and int labels, split into train and held-out test."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @staticmethod
    def normalize(pixels: np.ndarray) -> np.ndarray:
        """The default normalization: (pixel - 0) / 255."""
        return pixels.astype(np.float32) / 255.0


def digits_pixels(size: int = DIGITS_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (N, size, size, 1) uint8 pixels, with their labels."""
    from sklearn.datasets import load_digits

    from agent.geometry.letterbox import resize_image

    digits = load_digits()
    raw = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    pixels = np.stack([resize_image(img, (size, size), ResizeMode.STRETCH)[0] for img in raw])
    return pixels[..., np.newaxis], digits.target.astype(np.int64)


def load_digits_split(
    size: int = DIGITS_SIZE, test_fraction: float = 0.3, seed: int = 0
) -> DigitsData:
    x, y = digits_pixels(size)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return DigitsData(x[train], y[train], x[test], y[test])


def build_digits_cnn(size: int = DIGITS_SIZE, width: int = 32, dense: int = 256) -> Any:
    """Two conv blocks and a dense head: ~330k weights at the defaults, so weights dominate the file."""
    import keras

    inp = keras.Input((size, size, 1), name="image")
    x = inp
    for filters in (width, 2 * width):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    out = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out, name="digits_cnn")


def train_digits_cnn(
    epochs: int = 8,
    seed: int = 0,
    size: int = DIGITS_SIZE,
    width: int = 32,
    dense: int = 256,
    data: DigitsData | None = None,
) -> tuple[Any, DigitsData]:
    """Train the digits CNN with a fixed seed; returns the model and the data split it used."""
    import keras

    data = data or load_digits_split(size, seed=seed)
    keras.utils.set_random_seed(seed)
    model = build_digits_cnn(size, width, dense)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        DigitsData.normalize(data.train_x),
        data.train_y,
        epochs=epochs,
        batch_size=32,
        shuffle=True,
        verbose=0,
    )
    _, acc = model.evaluate(DigitsData.normalize(data.test_x), data.test_y, verbose=0)
    logger.info("digits CNN: held-out accuracy %.4f after %d epochs", acc, epochs)
    return model, data


def write_image_folder(pixels: np.ndarray, labels: np.ndarray, folder: Path) -> Path:
    """PNG files under folder/<label>/, the layout `edgegap convert --calibration` reads."""
    import cv2

    for i, (img, label) in enumerate(zip(pixels, labels, strict=True)):
        sub = folder / CLASS_NAMES[int(label)]
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f"{i:05d}.png"), img[..., 0] if img.shape[-1] == 1 else img)
    return folder
