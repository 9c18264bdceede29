"""`edgegap import` end to end on models built as their authors build them (tests/thirdparty_models.py):
each is imported, verified, served by the agent on an image folder, and every detection (or tensor)
the agent publishes is checked against a NumPy reference decode of the same model outputs."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result

pytest.importorskip("tensorflow")

import thirdparty_models as T  # noqa: E402
from conftest import Broker  # noqa: E402
from reference_decode import (  # noqa: E402
    THRESHOLD,
    ref_raw_xywh,
    ref_ssd_postprocess,
    ref_yolo_transposed,
    same,
)

from agent.bundle.loading import load_bundle  # noqa: E402
from agent.cli import cli as agent_cli  # noqa: E402
from agent.preprocess import Preprocessor  # noqa: E402
from converter.cli import cli as edgegap_cli  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every third-party model, built once for the module."""
    d = tmp_path_factory.mktemp("thirdparty")
    return {
        "classifier": T.classifier(d / "classifier.tflite"),
        "yolo": T.yolo_transposed(d / "yolov8n_float32.tflite"),
        "landmarks": T.landmarks(d / "landmarks.tflite"),
        "nan": T.nan_on_bright_frames(d / "nan.tflite"),
        "raw": T.raw_detector(d / "face_detector.tflite"),
        "ssd": T.ssd_postprocess(d / "ssd_mobilenet.tflite", d),
    }


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(3)
    for i in range(3):
        cv2.imwrite(str(d / f"{i}.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return d


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    edgegap("keys", "generate", "--out", str(d))
    return d


def edgegap(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(edgegap_cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def agent(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(agent_cli, ["-q", "run", *[str(a) for a in args]])
    assert result.exit_code == code, result.output
    return result


def import_serve(
    model: Path, tmp: Path, keys: Path, frames: Path, *options: str
) -> tuple[Path, list[dict[str, Any]], Result]:
    """Import (signed), verify, serve every frame; the bundle, the JSONL records and the import."""
    bundle, jsonl = tmp / "bundle", tmp / "out.jsonl"
    imported = edgegap(
        "import", model, "--profile", "x86-avx2", "--latency-runs", "3", "--sign-key",
        keys / "edgegap.key", "--version", "7", "--output", bundle, *options,
    )  # fmt: skip
    verified = edgegap("verify", bundle, "--key", keys / "edgegap.pub")
    assert "verified" in verified.output
    report = json.loads((bundle / "report.json").read_text())
    assert report["passed"] and report["signed_by"] and report["layout"]
    agent(
        "--bundle", bundle, "--trusted-key", keys / "edgegap.pub", "--source", frames,
        "--rate", "all", "--jsonl", jsonl, "--score-threshold", THRESHOLD,
    )  # fmt: skip
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == len(list(frames.iterdir()))
    return bundle, records, imported


def model_outputs(bundle: Path, frames: Path) -> list[tuple[dict[str, np.ndarray], int, int]]:
    """Per frame (in the agent's order): each output dequantized by name, the frame's width, height.
    The input is made by the agent's pre-processing: the decoding is what is checked here."""
    from ai_edge_litert.interpreter import Interpreter

    b = load_bundle(bundle, [])
    pre = Preprocessor(b.manifest.input)
    it = Interpreter(model_content=b.model_bytes())
    it.allocate_tensors()
    out = []
    for path in sorted(frames.iterdir()):
        img = cv2.imread(str(path))
        x, _ = pre(img)
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        values = {}
        for spec in b.manifest.outputs:
            v = it.get_tensor(spec.index).astype(np.float64)
            if spec.scale:
                v = (v - spec.zero_point) * spec.scale
            values[spec.name] = v
        out.append((values, img.shape[1], img.shape[0]))
    return out


# --- the layouts ------------------------------------------------------------------------------

DETECTORS: dict[str, tuple[Callable[..., list[dict[str, Any]]], tuple[str, ...], str]] = {
    "ssd": (ref_ssd_postprocess, (), "the four TFLite_Detection_PostProcess outputs"),
    "yolo": (ref_yolo_transposed, (), "YOLO-style [1, 4 + C, N] transposed: 20 boxes of 3 classes"),
    "raw": (
        ref_raw_xywh,
        ("--decoder", "ssd_raw", "--box-coding", "xywh", "--box-units", "input",
         "--extra-values", "6", "--no-background-class", "--mean", "127.5", "--std", "127.5"),
        "raw-anchor detector: boxes [1, 48, 10] (xywh, 6 extra values), scores [1, 48, 1]",
    ),
}  # fmt: skip


@pytest.mark.parametrize("layout", ["ssd", "yolo", "raw"])
def test_detectors_import_and_serve_as_their_reference_decode(
    layout: str, built: dict[str, Path], frames: Path, keys: Path, tmp_path: Path
) -> None:
    reference, options, why = DETECTORS[layout]
    if layout == "raw":  # the anchors as SSD anchor-generator parameters
        (tmp_path / "anchors.json").write_text(json.dumps(T.ANCHOR_GENERATOR))
        options = (*options, "--anchor-generator", str(tmp_path / "anchors.json"))
    bundle, records, imported = import_serve(built[layout], tmp_path, keys, frames, *options)
    assert why in imported.output
    found = 0
    for rec, (outs, w, h) in zip(records, model_outputs(bundle, frames), strict=True):
        same(rec["detections"], reference(outs, w, h))
        found += len(rec["detections"])
    assert found >= 3  # the comparison covered real detections


def test_raw_anchors_from_a_npy_file_serve_the_same(
    built: dict[str, Path], frames: Path, keys: Path, tmp_path: Path
) -> None:
    """MediaPipe publishes anchors as (x_center, y_center, w, h) rows: --anchor-order xywh."""
    np.save(tmp_path / "anchors.npy", T.raw_anchors())
    _, options, _ = DETECTORS["raw"]
    bundle, records, _ = import_serve(
        built["raw"], tmp_path, keys, frames, *options, "--anchors", str(tmp_path / "anchors.npy"),
        "--anchor-order", "xywh",
    )  # fmt: skip
    data = json.loads((bundle / "manifest.json").read_text())["extra"]["anchor_data"]
    assert data["count"] == 48 and len(data["sha256"]) == 64
    for rec, (outs, w, h) in zip(records, model_outputs(bundle, frames), strict=True):
        same(rec["detections"], ref_raw_xywh(outs, w, h))


def test_classifier_imports_int8_and_serves_its_top_k(
    built: dict[str, Path], frames: Path, keys: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n")
    bundle, records, imported = import_serve(
        built["classifier"], tmp_path, keys, frames, "--labels", str(labels)
    )
    assert "classifier: 4 classes (softmax)" in imported.output
    assert "int8 input fed the frame's bytes as they are" in imported.output
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["input"]["dtype"] == "int8" and m["outputs"][0]["scale"] > 0
    names = ["cat", "dog", "bird", "fish"]
    for rec, (outs, _, _) in zip(records, model_outputs(bundle, frames), strict=True):
        p = outs["output_0"].ravel()
        top = np.argsort(-p, kind="stable")[:4]
        got = rec["detections"]
        assert [d["score"] for d in got] == pytest.approx(p[top].tolist(), abs=6e-5)
        assert {d["label"] for d in got} == {names[i] for i in top}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0  cat\n1  dog\n3  fish\n", ["cat", "dog", "class2", "fish"]),  # Coral's, with a gap
        ("0 cat\n1 dog\n2 bird\n3 fish\n", ["cat", "dog", "bird", "fish"]),  # Frigate's labelmap
        ("1: dog\n0: cat\n", ["cat", "dog"]),
        ("cat\n2 dogs\nbird\n", ["cat", "2 dogs", "bird"]),  # not every line numbered: names
    ],
)
def test_numbered_labels_files_are_read_by_their_numbers(
    text: str, want: list[str], built: dict[str, Path], tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text(text)
    bundle = tmp_path / "bundle"
    edgegap("import", built["classifier"], "--profile", "x86-avx2", "--latency-runs", "2",
            "--labels", labels, "--output", bundle)  # fmt: skip
    assert json.loads((bundle / "manifest.json").read_text())["labels"] == want


def test_numbered_labels_refuse_a_repeated_or_huge_index(tmp_path: Path) -> None:
    from converter.options import ConvertError
    from converter.prepare import read_labels

    path = tmp_path / "labels.txt"
    for text, why in (("0 cat\n0 dog\n", "index 0 is given twice"),
                      ("0 cat\n900000 dog\n", "index 900000 is over 100,000")):  # fmt: skip
        path.write_text(text)
        with pytest.raises(ConvertError, match=why):
            read_labels(path)


def test_landmark_model_serves_its_three_outputs_as_tensors(
    built: dict[str, Path], frames: Path, keys: Path, tmp_path: Path
) -> None:
    bundle, records, imported = import_serve(built["landmarks"], tmp_path, keys, frames)
    assert "published as tensors" in imported.output
    for rec, (outs, _, _) in zip(records, model_outputs(bundle, frames), strict=True):
        tensors = rec["tensors"]
        assert rec["detections"] == [] and set(tensors) == set(outs)
        for name, value in outs.items():
            t = tensors[name]
            assert t["shape"] == list(value.shape)
            if value.size <= 256:  # small: in full
                np.testing.assert_allclose(t["values"], value.ravel(), atol=2e-6)
            else:  # the 20x20 heatmap: summarized
                assert "values" not in t
                assert t["min"] == pytest.approx(value.min(), abs=2e-6)
                assert t["max"] == pytest.approx(value.max(), abs=2e-6)
                assert t["argmax"] == list(np.unravel_index(value.argmax(), value.shape))


# --- what is refused, and why ---------------------------------------------------------------


def test_unknown_layout_asks_for_decoder(built: dict[str, Path], tmp_path: Path) -> None:
    r = edgegap("import", built["raw"], "--profile", "x86-avx2", "--output", tmp_path / "b", code=1)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "cannot tell the layout" in lines[0]
    assert "--decoder ssd_raw" in lines[0] and not (tmp_path / "b").exists()


def test_anchors_that_are_not_npy_say_so(built: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "anchors.yaml").write_text(json.dumps(T.ANCHOR_GENERATOR))
    r = edgegap("import", built["raw"], "--profile", "x86-avx2", "--decoder", "ssd_raw",
                "--anchors", tmp_path / "anchors.yaml", "--output", tmp_path / "b", code=2)  # fmt: skip
    assert "anchors.yaml is not a .npy file (anchor-generator parameters go in " in r.output
    assert "--anchor-generator)" in r.output and "pickle" not in r.output
    (tmp_path / "broken.yaml").write_text("strides: [8]\n: :\n")
    r = edgegap("import", built["raw"], "--profile", "x86-avx2", "--decoder", "ssd_raw",
                "--anchor-generator", tmp_path / "broken.yaml", "--output", tmp_path / "b", code=2)  # fmt: skip
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert line.startswith("Error: Invalid value for --anchor-generator: ") and "line 2" in line
    assert r.output.strip().endswith(line)  # the YAML error's own lines are joined into it


def test_a_model_compiled_for_an_accelerator_is_refused_with_why(tmp_path: Path) -> None:
    """import runs the model on this host's CPU (golden outputs, latency): an Edge TPU-compiled
    model cannot run there, and the agent's advice to set runtime.delegate does not apply."""
    from test_agent_delegates import EDGETPU_OP, custom_op_model

    model = tmp_path / "detector_edgetpu.tflite"
    model.write_bytes(custom_op_model(EDGETPU_OP))
    r = edgegap("import", model, "--profile", "coral-edgetpu", "--output", tmp_path / "b", code=1)
    assert r.output.strip().splitlines() == [
        f"Error: the model needs custom op '{EDGETPU_OP}', which this host's CPU runtime cannot "
        "run (the edgetpu delegate provides it: the model was compiled for that accelerator); "
        "import runs the model here to record its golden outputs, so import it as it was before "
        "it was compiled (bundles of compiled models are not supported)"
    ]
    assert not (tmp_path / "b").exists()
    model.write_bytes(custom_op_model("vendor-npu-op"))  # not an accelerator edgegap knows
    r = edgegap("import", model, "--profile", "x86-avx2", "--output", tmp_path / "b", code=1)
    assert (
        "custom op 'vendor-npu-op', which this host's CPU runtime cannot run (no delegate "
        in r.output
    )
    assert "custom ops other than TFLite_Detection_PostProcess are not supported" in r.output


@pytest.mark.parametrize(
    ("model", "options", "error"),
    [
        ("yolo", ("--box-coding", "xywh", "--extra-values", "4"),
         "Error: --box-coding, --extra-values are ssd_raw options, and the decoder is yolo "
         "(YOLO-style [1, 4 + C, N] transposed: 20 boxes of 3 classes): give --decoder ssd_raw, "
         "or leave them out"),
        ("classifier", ("--full-max-values", "3"),
         "Error: --full-max-values is a tensor option, and the decoder is classification "
         "(classifier: 4 classes (softmax)): give --decoder tensor, or leave it out"),
        ("classifier", ("--pad-value", "114"), "Error: --pad-value needs --resize letterbox"),
        ("yolo", ("--box-units", "input"),
         "Error: yolo: box_format must be cxcywh or xyxy, box_units normalized or pixels"),
    ],
)  # fmt: skip
def test_options_of_another_decoder_are_refused(
    model: str, options: tuple[str, ...], error: str, built: dict[str, Path], tmp_path: Path
) -> None:
    """They would be signed into the manifest and do nothing: the layout is not the one meant."""
    r = edgegap("import", built[model], "--profile", "x86-avx2", *options, "--output",
                tmp_path / "b", code=1)  # fmt: skip
    assert r.output.strip().splitlines() == [error]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (("--mean", "1,2"), "Error: --mean has 2 values; give one, or one per channel (3)"),
        (("--std", "1,2,3,4"), "Error: --std has 4 values; give one, or one per channel (3)"),
        (("--std", "127.5,0,127.5"), "Error: --std must be non-zero and finite: [127.5, 0.0, 127.5]"),
        (("--mean", "nan"), "Error: --mean must be finite: [nan]"),
    ],
)  # fmt: skip
def test_bad_normalization_is_one_line(
    options: tuple[str, ...], error: str, built: dict[str, Path], tmp_path: Path
) -> None:
    r = edgegap("import", built["classifier"], "--profile", "x86-avx2", *options, "--output",
                tmp_path / "b", code=1)  # fmt: skip
    assert r.output.strip().splitlines() == [error]


def test_boxes_output_that_names_no_output_is_one_line(
    built: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "anchors.json").write_text(json.dumps(T.ANCHOR_GENERATOR))
    r = edgegap("import", built["raw"], "--profile", "x86-avx2", "--decoder", "ssd_raw",
                "--anchor-generator", tmp_path / "anchors.json", "--boxes-output", "boxes",
                "--output", tmp_path / "b", code=1)  # fmt: skip
    assert r.output.strip().splitlines() == [
        "Error: --boxes-output 'boxes': the model's outputs are 'output_1', 'output_0'"
    ]


def test_box_width_mismatch_is_refused_at_import_and_at_load(
    built: dict[str, Path], frames: Path, tmp_path: Path
) -> None:
    (tmp_path / "anchors.json").write_text(json.dumps(T.ANCHOR_GENERATOR))
    _, options, _ = DETECTORS["raw"]
    no_extra = [o for o in options if o not in ("--extra-values", "6")]
    gen = ("--anchor-generator", str(tmp_path / "anchors.json"))
    want = "raw_boxes is [1, 48, 10]; box coding xywh needs 4 values per anchor (or set extra_values: 6)"
    r = edgegap("import", built["raw"], "--profile", "x86-avx2", "--output", tmp_path / "x",
                *no_extra, *gen, code=1)  # fmt: skip
    assert want in r.output
    # A hand-edited manifest that says the same is refused when the agent loads it (exit 78).
    bundle = tmp_path / "bundle"
    edgegap("import", built["raw"], "--profile", "x86-avx2", "--latency-runs", "2",
            "--output", bundle, *options, *gen)  # fmt: skip
    m = json.loads((bundle / "manifest.json").read_text())
    del m["extra"]["extra_values"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    r = agent("--bundle", bundle, "--source", frames, "--rate", "all", code=78)
    assert want in r.output and "Traceback" not in r.output


@pytest.fixture(scope="module")
def white(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bright frames, on which the nan model's outputs are NaN."""
    d = tmp_path_factory.mktemp("white")
    for i in range(3):
        cv2.imwrite(str(d / f"{i}.png"), np.full((48, 64, 3), 255, np.uint8))
    return d


def test_a_decoder_failing_every_frame_exits_non_zero_with_the_reason(
    built: dict[str, Path], white: Path, tmp_path: Path
) -> None:
    bundle, jsonl = tmp_path / "bundle", tmp_path / "out.jsonl"
    edgegap("import", built["nan"], "--profile", "x86-avx2", "--decoder", "tensor",
            "--latency-runs", "2", "--output", bundle)  # fmt: skip
    r = agent("--bundle", bundle, "--source", white, "--rate", "all", "--jsonl", jsonl, code=1)
    assert "every frame failed (3 frames)" in r.output
    assert "has NaN or infinite values" in r.output
    assert jsonl.read_text() == ""
    # Looping forever, the agent leaves once health has been failed for exit_after_failed_s.
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"bundle: {{path: {bundle}}}\nsource: {{uri: {white}, loop: true, rate: all}}\n"
        "pipeline: {failed_after_frames: 2, exit_after_failed_s: 0.2}\n"
    )
    r = agent("--config", config, code=1)
    assert re.search(r"Error: decoding failed for 0\.\d s \(\d+ frames in a row failed; last: "
                     r"DecoderError: tensor: output 'output_0' has NaN", r.output), r.output  # fmt: skip


def test_health_failed_is_published_with_an_event(
    built: dict[str, Path], white: Path, mosquitto: Broker, tmp_path: Path
) -> None:
    from test_agent_e2e import Subscriber

    bundle = tmp_path / "bundle"
    edgegap("import", built["nan"], "--profile", "x86-avx2", "--decoder", "tensor",
            "--latency-runs", "2", "--output", bundle)  # fmt: skip
    sub = Subscriber(mosquitto, "edgegap/default/devices/cam1/#")
    try:
        config = tmp_path / "agent.yaml"
        config.write_text(
            f"bundle: {{path: {bundle}}}\nsource: {{uri: {white}, loop: true, rate: all}}\n"
            "pipeline: {failed_after_frames: 3, exit_after_failed_s: 1.0}\n"
            f"device_id: cam1\nmqtt: {{broker: '{mosquitto.url}'}}\n"
        )
        agent("--config", config, code=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not sub.on("/events"):
            time.sleep(0.05)
        events = sub.on("/events")
        assert [e["event"] for e in events] == ["failed"]
        assert "3 frames in a row failed" in events[0]["reason"]
        assert "failed" in [s.get("health") for s in sub.on("/status")]
    finally:
        sub.close()


def test_convert_points_a_tflite_file_to_import(built: dict[str, Path], tmp_path: Path) -> None:
    r = edgegap("convert", built["classifier"], "--profile", "x86-avx2", "--calibration",
                tmp_path, "--output", tmp_path / "b", code=1)  # fmt: skip
    assert "is a TFLite model" in r.output and "edgegap import" in r.output


def test_import_works_in_the_device_install(built: dict[str, Path], tmp_path: Path) -> None:
    from test_cli_device_install import edgegap_without_host

    model = tmp_path / "classifier.tflite"
    shutil.copy(built["classifier"], model)
    out = edgegap_without_host(
        "import", str(model), "--profile", "x86-avx2", "--latency-runs", "2",
        "--output", str(tmp_path / "bundle"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    assert (tmp_path / "bundle" / "report.json").is_file()


def test_large_outputs_are_golden_checked_every_kth_value(
    built: dict[str, Path], keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A YOLO head's outputs would not fit the manifest's 1 MiB three times over: the golden
    check then records every k-th value. Here the budget is made small for a small model."""
    import base64

    from converter import importing

    monkeypatch.setattr(importing, "GOLDEN_BUDGET", 2048)
    bundle = tmp_path / "bundle"
    edgegap("import", built["landmarks"], "--profile", "x86-avx2", "--latency-runs", "2",
            "--sign-key", keys / "edgegap.key", "--output", bundle)  # fmt: skip
    m = json.loads((bundle / "manifest.json").read_text())
    k = m["extra"]["golden_stride"]
    assert k == 4  # ceil(3 inputs x 411 values x 4 bytes x 4/3 / 2048)
    sizes = [len(base64.b64decode(e)) // 4 for e in m["golden"]["expected"][0]]
    assert sorted(sizes) == sorted(-(-n // k) for n in (1, 10, 400))
    assert "verified" in edgegap("verify", bundle, "--key", keys / "edgegap.pub").output
