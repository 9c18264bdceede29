"""Folding BGR into a model: the folded copy on BGR computes what the original computes on RGB,
and a model whose input channels cannot be folded is refused with the reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from converter.color_fold import FoldError, fold_bgr  # noqa: E402


def _branchy(seed: int = 0) -> Any:
    """Scalar rescaling and padding, a depthwise + batch-norm + PReLU branch, a pooled branch and
    a dense branch on the raw input, all meeting later: every kind of layer the fold goes through."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = keras.layers.ZeroPadding2D(1)(x)
    a = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    a = keras.layers.BatchNormalization(name="bn")(a)
    a = keras.layers.PReLU(name="prelu")(a)
    a = keras.layers.Conv2D(6, 3, padding="same", name="conv_a")(a)
    b = keras.layers.AveragePooling2D(1)(x)
    b = keras.layers.Conv2D(6, 3, name="conv_b", activation="relu")(b)
    c = keras.layers.Dense(6, name="dense_c")(inp)
    y = keras.layers.Add()([a, b, c])
    y = keras.layers.GlobalAveragePooling2D()(y)
    out = keras.layers.Dense(4, name="logits")(y)
    model = keras.Model(inp, out)
    # Batch-norm statistics and PReLU slopes that differ per channel, so a missed reversal shows.
    rng = np.random.default_rng(seed)
    bn = model.get_layer("bn")
    bn.set_weights(
        [
            rng.uniform(0.5, 2.0, 3),
            rng.normal(0, 1, 3),
            rng.normal(0, 1, 3),
            rng.uniform(0.5, 2.0, 3),
        ]
    )
    model.get_layer("prelu").set_weights(
        [rng.normal(0, 1, model.get_layer("prelu").get_weights()[0].shape)]
    )
    return model


def test_folded_model_on_bgr_matches_the_original_on_rgb() -> None:
    model = _branchy()
    before = [w.copy() for w in model.get_weights()]
    folded, changed = fold_bgr(model)
    assert changed == ["dw", "bn", "prelu", "conv_a", "conv_b", "dense_c"]
    rgb = np.random.default_rng(1).uniform(0, 255, (5, 12, 12, 3)).astype(np.float32)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    want = model.predict(rgb, verbose=0)
    np.testing.assert_allclose(folded.predict(bgr, verbose=0), want, rtol=1e-4, atol=1e-4)
    # The original is untouched, and it does need the channels in its own order.
    for w, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)
    assert np.abs(model.predict(bgr, verbose=0) - want).max() > 1e-2


@pytest.mark.parametrize(
    "adapted", [True, False], ids=["adapted-normalization", "constant-normalization"]
)
def test_per_channel_preprocessing_layers_are_reversed_too(adapted: bool) -> None:
    keras.utils.set_random_seed(2)
    stats = {"mean": [0.2, 0.5, 0.9], "variance": [0.01, 0.09, 0.25]}
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Rescaling([1 / 255, 1 / 128, 1 / 64], offset=[0.0, -0.5, -1.0], name="scale")(
        inp
    )
    norm = keras.layers.Normalization(axis=-1, name="norm", **({} if adapted else stats))
    x = norm(x)
    out = keras.layers.Dense(2, name="logits")(
        keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(x))
    )
    model = keras.Model(inp, out)
    if adapted:
        norm.adapt_mean.assign(stats["mean"])
        norm.adapt_variance.assign(stats["variance"])
        norm.finalize_state()
    folded, changed = fold_bgr(model)
    assert changed == ["scale", "norm", "conv"]
    rgb = np.random.default_rng(3).uniform(0, 255, (3, 10, 10, 3)).astype(np.float32)
    want = model.predict(rgb, verbose=0)
    np.testing.assert_allclose(
        folded.predict(np.ascontiguousarray(rgb[..., ::-1]), verbose=0), want, rtol=1e-4, atol=1e-4
    )
    assert (
        np.abs(model.predict(np.ascontiguousarray(rgb[..., ::-1]), verbose=0) - want).max() > 1e-2
    )


def test_folding_twice_gives_back_the_original() -> None:
    model = _branchy(seed=3)
    twice, _ = fold_bgr(fold_bgr(model)[0])
    for w, b in zip(twice.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(w, b)


def test_pruning_a_folded_model_removes_the_same_channels() -> None:
    """convert --fold-bgr --prune folds first: the pruned folded model on BGR must be the pruned
    original on RGB (filter importance does not depend on the order of a filter's inputs)."""
    from converter.pruning import prune

    model = _branchy(seed=5)
    folded, _ = fold_bgr(model)
    pruned, _ = prune(model, 0.5, min_channels=2)
    pruned_folded, _ = prune(folded, 0.5, min_channels=2)
    assert pruned.count_params() < model.count_params()
    rgb = np.random.default_rng(6).uniform(0, 255, (4, 12, 12, 3)).astype(np.float32)
    want = pruned.predict(rgb, verbose=0)
    np.testing.assert_allclose(
        pruned_folded.predict(np.ascontiguousarray(rgb[..., ::-1]), verbose=0),
        want,
        rtol=1e-4,
        atol=1e-4,
    )


def _model(build: Any, shape: tuple[int, ...] = (8, 8, 3)) -> Any:
    inp = keras.Input(shape)
    return keras.Model(inp, build(inp))


@pytest.mark.parametrize(
    ("build", "shape", "needle"),
    [
        (lambda i: keras.layers.Conv2D(2, 3)(i), (8, 8, 1), "3-channel input; this model takes 1"),
        (
            lambda i: keras.layers.Dense(2)(keras.layers.Flatten(name="flat")(i)),
            (8, 8, 3),
            "'flat' (Flatten)",
        ),
        (
            lambda i: keras.layers.Conv2D(2, 1)(keras.layers.Concatenate(name="cat")([i, i])),
            (8, 8, 3),
            "'cat'",
        ),
        (
            lambda i: keras.layers.Conv2D(2, 1)(keras.layers.Softmax(name="sm")(i)),
            (8, 8, 3),
            "'sm'",
        ),
        (lambda i: keras.layers.ReLU()(i), (8, 8, 3), "reach an output"),
        (
            lambda i: keras.layers.SeparableConv2D(2, 3, name="sep")(i),
            (8, 8, 3),
            "'sep' (SeparableConv2D)",
        ),
    ],
    ids=["one-channel", "flatten", "concatenate", "softmax", "identity", "separable"],
)
def test_inputs_that_cannot_be_folded_are_refused(
    build: Any, shape: tuple[int, ...], needle: str
) -> None:
    with pytest.raises(FoldError, match="fold") as info:
        fold_bgr(_model(build, shape))
    assert needle in str(info.value)


def test_a_shared_first_layer_is_refused() -> None:
    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(3, 1, name="shared")
    out = conv(conv(inp))
    with pytest.raises(FoldError, match="'shared' is shared"):
        fold_bgr(keras.Model(inp, out))
