"""Folding the color swap into a converted model when the agent loads it (agent.runtime.bgr_fold).

Real Keras models are converted by the converter and run in the real interpreter: the folded
model fed BGR must compute what the original computes on RGB, graphs it cannot fold are refused
with the reason, and corrupt bytes never raise anything but FoldRefused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402
from keras_models import tiny_tensor_model  # noqa: E402
from test_convert import scheme_profile  # noqa: E402

from agent.bundle.loading import load_bundle  # noqa: E402
from agent.bundle.manifest import ColorOrder, InputSpec  # noqa: E402
from agent.runtime import LoadedModel, open_model  # noqa: E402
from agent.runtime.bgr_fold import FoldRefused, bgr_input, fold_bgr  # noqa: E402
from agent.runtime.tflite_graph import DEQUANTIZE, read_graph  # noqa: E402
from converter.pipeline import ConvertOptions, convert  # noqa: E402
from firmware_profiles import Profile, load_profile  # noqa: E402

SHAPE = (8, 8, 3)


def two_first_convs(seed: int = 4) -> Any:
    """Two convolutions read the input (3x3 and 1x1), then meet: both filters must be folded."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(SHAPE, name="image")
    a = keras.layers.Conv2D(6, 3, padding="same")(inp)
    b = keras.layers.Conv2D(6, 1)(inp)
    x = keras.layers.ReLU()(keras.layers.Add()([a, b]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(4, name="out")(x), name="two_convs")


def depthwise_first(seed: int = 5) -> Any:
    keras.utils.set_random_seed(seed)
    inp = keras.Input(SHAPE, name="image")
    x = keras.layers.DepthwiseConv2D(3)(inp)
    x = keras.layers.Conv2D(4, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(4, name="out")(x), name="dw_first")


def shared_first_conv(seed: int = 6) -> Any:
    """One Conv2D layer applied to the input and again to its own output: the two operators
    share a filter, so reversing it for the first would break the second."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(SHAPE, name="image")
    conv = keras.layers.Conv2D(3, 1, name="shared")
    x = conv(keras.layers.ReLU()(conv(inp)))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(4, name="out")(x), name="shared_conv")


def first_conv_in_float(root: Path) -> bytes:
    """tiny_tensor_model in int8 with its convolution kept in float, as the converter's float
    fallback does it: the int8 input reaches the convolution through a DEQUANTIZE."""
    from converter.data import Normalization, load_data
    from converter.fallback import layer_errors
    from converter.loading import load_model
    from converter.pipeline import make_task
    from converter.quantize import export_saved_model, requantize

    tiny_tensor_model().save(root / "tiny.keras")
    source = load_model(root / "tiny.keras")
    task = make_task("tensor", source)
    export_saved_model(task, source.model, root / "saved")
    profile = load_profile("x86-avx2")
    calibration = load_data(root / "calib.npy", source.input_shape, Normalization())
    calibrated, errors = layer_errors(root / "saved", profile, task, calibration)
    convs = [e.node for e in errors if e.op.upper() == "CONV_2D"]
    assert len(convs) == 1, errors
    return requantize(calibrated, profile, convs)


MODELS = {
    "int8": (tiny_tensor_model, "x86-avx2"),
    "int8-two-convs": (two_first_convs, "x86-avx2"),
    "dynamic-range": (tiny_tensor_model, "x86-dynamic-range"),
    "float16": (tiny_tensor_model, "x86-float16"),
    "int8-depthwise-first": (depthwise_first, "x86-avx2"),
    "int8-two-convs-shared-filter": (shared_first_conv, "x86-avx2"),
}


def _profile(name: str) -> Profile:
    if name == "x86-avx2":
        return load_profile(name)
    scheme = name.removeprefix("x86-")
    return scheme_profile(scheme, "float32")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each model converted by the converter, as the bundle's .tflite bytes."""
    root = tmp_path_factory.mktemp("fold")
    np.save(
        root / "calib.npy", np.random.default_rng(0).integers(0, 256, (48, *SHAPE)).astype(np.uint8)
    )
    out = {}
    for name, (build, profile) in MODELS.items():
        result = convert(
            ConvertOptions(
                model=build(), profile=_profile(profile), calibration=root / "calib.npy",
                output=root / name, task="tensor", name=name, version=1, latency_runs=3,
            )
        )  # fmt: skip
        assert result.passed, result.reason
        out[name] = load_bundle(root / name).model_bytes()
    out["int8-first-conv-float"] = first_conv_in_float(root)
    # The graphs these names promise: the input dequantized for a float convolution, and float16
    # weights dequantized at run time.
    g = read_graph(out["int8-first-conv-float"]).subgraphs[0]
    assert [op.opcode for op in g.operators if g.inputs[0] in op.inputs] == [DEQUANTIZE]
    g = read_graph(out["float16"]).subgraphs[0]
    conv = next(op for op in g.operators if g.inputs[0] in op.inputs)
    assert any(conv.inputs[1] in op.outputs and op.opcode == DEQUANTIZE for op in g.operators)
    return out


def _run(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    model.set_input(x)
    model.invoke()
    return model.get(model.outputs[0].index).astype(np.float64)


def _inputs(model: LoadedModel, count: int = 4) -> list[np.ndarray]:
    spec = model.inputs[0]
    rng = np.random.default_rng(7)
    if spec.dtype == np.float32:
        return [rng.uniform(0, 1, spec.shape).astype(np.float32) for _ in range(count)]
    info = np.iinfo(spec.dtype)
    return [
        rng.integers(info.min, info.max + 1, spec.shape).astype(spec.dtype) for _ in range(count)
    ]


def test_the_graph_reader_agrees_with_the_tflite_schema(models: dict[str, bytes]) -> None:
    """Every tensor and operator read by agent.runtime.tflite_graph, against LiteRT's generated schema."""
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    for name, content in models.items():
        graph = read_graph(content)
        ref = schema.Model.GetRootAsModel(content, 0)
        codes = [
            max(ref.OperatorCodes(i).DeprecatedBuiltinCode(), ref.OperatorCodes(i).BuiltinCode())
            for i in range(ref.OperatorCodesLength())
        ]
        assert len(graph.subgraphs) == ref.SubgraphsLength() >= 1, name
        assert len(graph.buffers) == ref.BuffersLength(), name
        for sub, rsub in zip(
            graph.subgraphs, (ref.Subgraphs(i) for i in range(ref.SubgraphsLength())), strict=True
        ):
            assert sub.inputs == tuple(rsub.InputsAsNumpy()) and sub.outputs == tuple(
                rsub.OutputsAsNumpy()
            )
            assert (
                len(sub.tensors) == rsub.TensorsLength()
                and len(sub.operators) == rsub.OperatorsLength()
            )
            for t in sub.tensors:
                rt = rsub.Tensors(t.index)
                assert (
                    t.shape == tuple(int(d) for d in rt.ShapeAsNumpy())
                    if rt.ShapeLength()
                    else t.shape == ()
                )
                assert (t.type, t.buffer) == (rt.Type(), rt.Buffer()), (name, t.index)
                q = rt.Quantization()
                assert t.quant_scales == (q.ScaleLength() if q else 0), (name, t.index)
                data = ref.Buffers(t.buffer).DataAsNumpy()
                start, length = graph.buffers[t.buffer]
                assert length == (0 if isinstance(data, int) else data.size), (name, t.index)
                if length:
                    assert content[start : start + length] == data.tobytes()
            for i, op in enumerate(sub.operators):
                rop = rsub.Operators(i)
                assert op.opcode == codes[rop.OpcodeIndex()]
                assert op.inputs == tuple(rop.InputsAsNumpy()) and op.outputs == tuple(
                    rop.OutputsAsNumpy()
                )


@pytest.mark.parametrize(
    ("name", "convs"),
    [
        ("int8", 1),
        ("int8-two-convs", 2),
        ("int8-first-conv-float", 1),
        ("dynamic-range", 1),
        ("float16", 1),
    ],
)
def test_the_folded_model_on_bgr_computes_the_original_on_rgb(
    models: dict[str, bytes], name: str, convs: int
) -> None:
    content = models[name]
    folded = fold_bgr(content)
    assert folded.convolutions == convs and len(folded.content) == len(content)
    original, bgr_model = open_model(content), open_model(folded.content)
    for rgb in _inputs(original):
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        want = _run(original, rgb)
        got = _run(bgr_model, bgr)
        if name.startswith("int8") and name != "int8-first-conv-float":
            np.testing.assert_array_equal(got, want)  # integer sums: the same in any order
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # Not vacuous: fed the swapped frame, the original model does answer differently.
        assert np.abs(_run(original, bgr) - want).max() > 0
    # The fold is its own inverse, and the bundle's bytes are not touched.
    assert fold_bgr(folded.content).content == content


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("int8-depthwise-first", "read by DEPTHWISE_CONV_2D"),
        ("int8-two-convs-shared-filter", "shared with another operator"),
    ],
)
def test_graphs_that_cannot_be_folded_are_refused_with_the_reason(
    models: dict[str, bytes], name: str, needle: str
) -> None:
    with pytest.raises(FoldRefused, match=needle):
        fold_bgr(models[name])


def test_corrupt_bytes_are_refused_and_never_crash(models: dict[str, bytes]) -> None:
    """Truncations and random byte flips: FoldRefused or a fold, nothing else, and bounded."""
    content = models["int8-two-convs"]
    with pytest.raises(FoldRefused, match="TFL3"):
        fold_bgr(b"not a model")
    for cut in (8, 12, 64, len(content) // 2):
        with pytest.raises(FoldRefused, match="outside|unreadable"):
            fold_bgr(content[:cut])
    rng = np.random.default_rng(3)
    refused = 0
    for i in range(1000):
        broken = bytearray(content)
        if i % 2:  # random bytes anywhere
            for pos in rng.integers(0, len(broken), 4):
                broken[pos] = int(rng.integers(0, 256))
        else:  # a random 32-bit value over an aligned word: offsets, counts and indexes go wrong
            pos = 4 * int(rng.integers(0, len(broken) // 4))
            broken[pos : pos + 4] = int(rng.integers(0, 2**32)).to_bytes(4, "little")
        try:
            fold_bgr(bytes(broken))
        except FoldRefused:
            refused += 1
    assert refused > 0  # some corruptions land in the structure the reader follows


def test_the_folded_input_spec_is_bgr_with_per_channel_constants_reversed() -> None:
    spec = InputSpec(shape=[1, 8, 8, 3], dtype="int8", scale=1 / 255, zero_point=-128,
                     mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0])  # fmt: skip
    bgr = bgr_input(spec)
    assert (
        bgr.color_order is ColorOrder.BGR
        and bgr.mean == [3.0, 2.0, 1.0]
        and bgr.std == [6.0, 5.0, 4.0]
    )
    assert spec.color_order is ColorOrder.RGB  # the manifest's own spec is unchanged
