"""Tiny Keras models and data for the converter tests: each converts in well under a second."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

IMAGE = (8, 8, 3)


def _keras() -> Any:
    import keras

    return keras


def tiny_tensor_model(seed: int = 1, shape: tuple[int, ...] = IMAGE, outputs: int = 4) -> Any:
    """Conv, ReLU, global average pool, dense: ops every profile can run."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inp = keras.Input(shape, name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(outputs, name="out")(x)
    return keras.Model(inp, out, name="tiny")


def tiny_classifier(seed: int = 2, shape: tuple[int, ...] = IMAGE, classes: int = 3) -> Any:
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inp = keras.Input(shape, name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="tiny_classifier")


def trained_classifier(
    x: np.ndarray, y: np.ndarray, mean: float = 0.0, std: float = 255.0, seed: int = 2
) -> Any:
    """tiny_classifier fitted to (x - mean) / std, so its predictions are decisive, not near-ties."""
    keras = _keras()
    model = tiny_classifier(seed=seed, classes=int(y.max()) + 1)
    model.compile(optimizer=keras.optimizers.Adam(3e-2), loss="sparse_categorical_crossentropy")
    model.fit((x.astype(np.float32) - mean) / std, y, epochs=40, batch_size=32, verbose=0)
    return model


def leaky_model(seed: int = 3) -> Any:
    """LEAKY_RELU quantizes to int8 fine but is not in coral-edgetpu's op allowlist."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inp = keras.Input(IMAGE, name="image")
    x = keras.layers.Conv2D(8, 3)(inp)
    x = keras.layers.LeakyReLU(negative_slope=0.1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inp, out, name="leaky")


def sin_model(seed: int = 6) -> Any:
    """SIN has no int8 kernel: even an int8-only converter leaves it float, between DEQUANTIZE/QUANTIZE."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inp = keras.Input(IMAGE, name="image")
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.Activation(keras.ops.sin)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3)(x), name="sin")


@cache
def _register_block() -> type:
    keras = _keras()

    @keras.saving.register_keras_serializable(package="edgegap_tests")
    class TinyBlock(keras.Model):
        """A subclassed model used as a layer inside a functional one."""

        def __init__(self, filters: int = 8, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.filters = filters
            self.conv = keras.layers.Conv2D(filters, 3, activation="relu")
            self.pool = keras.layers.GlobalAveragePooling2D()

        def call(self, x: Any) -> Any:
            return self.pool(self.conv(x))

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "filters": self.filters}

    return TinyBlock


def functional_with_subclassed_inner(seed: int = 4) -> Any:
    keras = _keras()
    block_cls = _register_block()
    keras.utils.set_random_seed(seed)
    inp = keras.Input(IMAGE, name="image")
    x = block_cls(8, name="block")(inp)
    out = keras.layers.Dense(4, name="out")(x)
    return keras.Model(inp, out, name="wrapped")


def pattern_data(n: int, seed: int = 0, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """uint8 8x8x3 images: one bright quadrant per class, plus noise. Easy to learn, easy to agree on."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, *IMAGE)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, r * 4 : r * 4 + 4, col * 4 : col * 4 + 4, :] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y


def outlier_classifier(
    train_x: np.ndarray, train_y: np.ndarray, seed: int = 5, outlier: float = 400.0
) -> Any:
    """A trained classifier whose logits layer has one huge weight row fed by a dead unit.

    In float the dead unit is always 0, so the huge row changes nothing. In int8 the logits layer's
    per-channel weight scale is set by the huge row, so every real weight rounds to zero and the
    predictions collapse. Keeping that one layer in float restores them.
    """
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inp = keras.Input(IMAGE, name="image")
    x = keras.layers.Flatten()(inp)
    h = keras.layers.Dense(32, activation="relu", name="features")(x)
    out = keras.layers.Dense(int(train_y.max()) + 1, name="logits")(h)
    model = keras.Model(inp, out, name="outlier")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(train_x.astype(np.float32) / 255.0, train_y, epochs=20, batch_size=32, verbose=0)
    w, b = model.get_layer("features").get_weights()
    b[0] = -1000.0  # unit 0 is dead for every input
    model.get_layer("features").set_weights([w, b])
    w2, b2 = model.get_layer("logits").get_weights()
    w2[0, :] = outlier
    model.get_layer("logits").set_weights([w2, b2])
    return model


def save_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path
