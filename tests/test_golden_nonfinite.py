"""A golden check whose outputs are NaN or infinite fails, whatever was recorded; so does a
manifest whose tolerance is not a finite number. Real float TFLite models make the NaN and inf."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from agent.bundle.golden import check_golden, record_golden  # noqa: E402
from agent.bundle.manifest import (  # noqa: E402
    Decoder,
    InputSpec,
    Manifest,
    ModelFile,
    OutputRole,
    OutputSpec,
)
from agent.runtime import LoadedModel, open_model  # noqa: E402


@cache
def tflite(kind: str) -> bytes:
    """A float model of a [1, 4, 4, 1] input: `finite` x + 1, `nan` log(x - 2), `inf` 1 / (0 x)."""
    import keras
    import tensorflow as tf

    ops: dict[str, Callable[[Any], Any]] = {
        "finite": lambda x: x + 1.0,
        "nan": lambda x: keras.ops.log(x - 2.0),
        "inf": lambda x: 1.0 / (x * 0.0),
    }
    inp = keras.Input((4, 4, 1), batch_size=1, name="image")
    out = keras.layers.Flatten()(keras.layers.Lambda(ops[kind])(inp))
    model = keras.Model(inp, out)
    with tempfile.TemporaryDirectory() as tmp:
        model.export(str(Path(tmp) / "saved"), verbose=False)
        return bytes(tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "saved")).convert())


def manifest(content: bytes, model: LoadedModel) -> Manifest:
    out = model.outputs[0]
    return Manifest(
        name="nonfinite",
        version=1,
        profile="x86-avx2",
        created="2026-01-01T00:00:00Z",
        task="tensor",
        decoder=Decoder.TENSOR,
        model=ModelFile(sha256=hashlib.sha256(content).hexdigest(), size=len(content)),
        input=InputSpec(shape=[1, 4, 4, 1], dtype="float32", mean=[0.0], std=[255.0]),
        outputs=[
            OutputSpec(
                name=out.name,
                index=out.index,
                role=OutputRole.TENSOR,
                shape=list(out.shape),
                dtype="float32",
            )
        ],
    )


def loaded(kind: str) -> tuple[LoadedModel, Manifest]:
    model = open_model(tflite(kind))
    return model, manifest(tflite(kind), model)


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_outputs_fail_even_when_recorded_so(kind: str) -> None:
    model, m = loaded(kind)
    m = m.model_copy(
        update={"golden": record_golden(model, m)}
    )  # the expected values are NaN/inf too
    result = check_golden(model, m)
    assert not result.passed and "not finite" in result.reason


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_outputs_fail_against_finite_expectations(kind: str) -> None:
    good, m = loaded("finite")
    golden = record_golden(good, m)
    assert check_golden(good, m.model_copy(update={"golden": golden})).passed
    bad, _ = loaded(kind)
    result = check_golden(bad, m.model_copy(update={"golden": golden}))
    assert not result.passed


@pytest.mark.parametrize("atol", [float("nan"), float("inf"), -1.0])
def test_a_tolerance_that_is_not_a_finite_non_negative_number_fails(atol: float) -> None:
    model, m = loaded("finite")
    golden = record_golden(model, m).model_copy(update={"atol": [atol]})
    result = check_golden(model, m.model_copy(update={"golden": golden}))
    assert not result.passed and "tolerance" in result.reason
    assert np.isfinite(record_golden(model, m).atol).all()
