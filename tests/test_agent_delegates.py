"""Delegates in the agent, with LiteRT's real load_delegate and real interpreters.

No external delegate library ships with LiteRT or exists on this machine (no libedgetpu, no GPU
delegate), so a delegate actually taking a model is not exercised here; what is: a missing library,
a library that is not a delegate, a model with an Edge TPU custom op and nothing to resolve it,
the fallback to the CPU, and a profile naming the delegate.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_agent_kit import cached_bundle, write_images

from agent.bundle.loading import Bundle, write_bundle
from agent.bundle.manifest import Decoder, InputSpec, Manifest, ModelFile, OutputRole, OutputSpec
from agent.cli import cli
from agent.config import load_config
from agent.metrics import RollingStats
from agent.runtime import DelegateError, open_model
from agent.served import load_served_model
from agent.status import status_message

pytest.importorskip("tensorflow")

EDGETPU_OP = "edgetpu-custom-op"


def custom_op_model(op: str) -> bytes:
    """A one-conv model converted with plain tf.lite, its CONV_2D turned into custom op `op`, as
    the Edge TPU compiler leaves a model: one custom op the CPU runtime cannot resolve."""
    import flatbuffers
    import keras
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema

    inp = keras.Input((8, 8, 3), batch_size=1)
    model = keras.Model(inp, keras.layers.Conv2D(2, 1)(inp))
    plain = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    tree = schema.ModelT.InitFromPackedBuf(plain, 0)
    conv = schema.BuiltinOperator.CONV_2D
    (code,) = [c for c in tree.operatorCodes if max(c.builtinCode, c.deprecatedBuiltinCode) == conv]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = op
    for o in tree.subgraphs[0].operators:
        o.builtinOptionsType, o.builtinOptions = 0, None
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def custom_op_bundle(out: Path, op: str) -> Bundle:
    content = custom_op_model(op)
    manifest = Manifest(
        name="compiled",
        version=1,
        profile="coral-edgetpu",
        created="2026-01-01T00:00:00Z",
        task="tensor",
        decoder=Decoder.TENSOR,
        model=ModelFile(sha256=hashlib.sha256(content).hexdigest(), size=len(content)),
        input=InputSpec(shape=[1, 8, 8, 3], dtype="float32", mean=[0.0], std=[255.0]),
        outputs=[
            OutputSpec(
                name="out", index=1, role=OutputRole.TENSOR, shape=[1, 8, 8, 2], dtype="float32"
            )
        ],
    )
    return write_bundle(out, content, manifest)


def with_profile(src: Bundle, out: Path, profile: str) -> Bundle:
    """The same model under a manifest naming another device profile."""
    return write_bundle(
        out, src.model_bytes(), src.manifest.model_copy(update={"profile": profile})
    )


def run(bundle: Path, images: Path, *extra: str) -> Result:
    args = ["run", "--bundle", str(bundle), "--source", str(images), "--rate", "all", *extra]
    return CliRunner().invoke(cli, args)


def error_line(res: Result) -> str:
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("frames"), 3)


def test_missing_delegate_library_names_it_and_how_to_install(images: Path) -> None:
    bundle = cached_bundle("classification").path
    line = error_line(run(bundle, images, "--delegate", "edgetpu"))
    assert "libedgetpu.so.1 not found" in line and "apt-get install libedgetpu1-std" in line
    line = error_line(run(bundle, images, "--delegate", "/opt/nowhere/libmy_delegate.so"))
    assert "/opt/nowhere/libmy_delegate.so not found" in line


def test_a_library_that_is_not_a_delegate_is_refused(images: Path) -> None:
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to load")
    line = error_line(run(cached_bundle("classification").path, images, "--delegate", libm))
    assert "is not an external delegate library" in line and "tflite_plugin_create_delegate" in line


def test_unknown_delegate_name_is_a_config_error(images: Path) -> None:
    line = error_line(run(cached_bundle("classification").path, images, "--delegate", "tpu9000"))
    assert "runtime.delegate" in line and "tpu9000" in line


def test_unresolved_edgetpu_op_names_the_op_and_its_delegate(
    tmp_path: Path, images: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = custom_op_bundle(tmp_path / "compiled", EDGETPU_OP).path
    line = error_line(run(bundle, images, "--delegate", "none"))
    assert f"custom op '{EDGETPU_OP}'" in line
    assert "the edgetpu delegate provides it (libedgetpu.so.1)" in line
    assert "libedgetpu1-std" in line
    # with the fallback, the delegate is still missing, and the CPU cannot run the op
    with caplog.at_level("WARNING", logger="agent.runtime"):
        line = error_line(run(bundle, images, "--delegate-fallback", "cpu"))
    assert "cannot run on the CPU" in line and EDGETPU_OP in line and "libedgetpu.so.1" in line
    assert "serving on the CPU" not in caplog.text  # no warning saying the opposite beforehand


def test_unresolved_unknown_op_says_no_known_delegate_provides_it() -> None:
    with pytest.raises(DelegateError, match="'vendor-npu-op'.*no delegate edgegap knows"):
        open_model(custom_op_model("vendor-npu-op"))


def test_profile_delegate_is_used_and_fallback_serves_on_cpu(tmp_path: Path, images: Path) -> None:
    src = cached_bundle("classification")
    coral = with_profile(src, tmp_path / "coral", "coral-edgetpu").path  # profile: delegate edgetpu
    line = error_line(run(coral, images))
    assert "delegate edgetpu" in line and "libedgetpu1-std" in line

    out = tmp_path / "out.jsonl"
    res = run(coral, images, "--delegate-fallback", "cpu", "--jsonl", str(out))
    assert res.exit_code == 0, res.output
    assert "delegate none (CPU)" in res.output
    assert "delegate fallback to the CPU: delegate edgetpu: library libedgetpu.so.1" in res.output
    assert len(out.read_text().splitlines()) == 3
    res = run(coral, images, "--delegate", "none", "--jsonl", str(tmp_path / "b.jsonl"))
    assert res.exit_code == 0 and "delegate none (CPU)" in res.output, res.output
    assert "fallback" not in res.output

    config = load_config(None, {"runtime.delegate_fallback": "cpu", "bundle.path": str(coral)})
    served = load_served_model(coral, config, [])
    status = status_message("cam", "lab", "ok", served, None, None, RollingStats())
    assert status["backend"]["delegate"] is None
    assert "libedgetpu.so.1" in status["backend"]["delegate_fallback"]
    json.dumps(status)
    ref = load_served_model(src.path, config, [])  # x86-avx2: no delegate, no fallback
    status = status_message("cam", "lab", "ok", ref, None, None, RollingStats())
    assert status["backend"]["delegate"] is None and "delegate_fallback" not in status["backend"]


def test_profile_and_config_delegate_names_are_checked() -> None:
    from pydantic import ValidationError

    from agent.config import ConfigError
    from firmware_profiles import Profile, load_profile

    doc = load_profile("x86-avx2").model_dump(mode="json")
    doc["runtime"]["delegate"] = "tpu9000"
    with pytest.raises(ValidationError, match="tpu9000"):
        Profile.model_validate(doc)
    doc["runtime"]["delegate"] = "/opt/npu/libvx_delegate.so"
    doc["runtime"]["delegate_options"] = {"device": "usb"}
    assert Profile.model_validate(doc).runtime.delegate_options == {"device": "usb"}
    assert load_profile("coral-edgetpu").runtime.delegate == "edgetpu"
    with pytest.raises(ConfigError, match="runtime.delegate"):
        load_config(None, {"bundle.path": "b", "runtime.delegate": "tpu9000"})
