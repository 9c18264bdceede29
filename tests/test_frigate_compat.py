"""A converted detector runs as Frigate's CPU TFLite detector reads it, and finds what the agent finds.

The reader below follows Frigate's documented behaviour for its `cpu` detector with
`model_type: ssd`: it feeds a uint8 NHWC RGB frame of the model's size, reads the outputs by
position from get_output_details() as boxes, classes, scores, count, and keeps rows in order
until a score falls below 0.4 (at most 20).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from agent.bundle.loading import load_bundle
from agent.cli import cli as agent_cli
from converter.cli import cli as convert_cli
from converter.output_order import output_indices, reorder_outputs
from converter.tasks.detector_config import read_sidecar
from converter.zoo.detection_data import CLASSES, generate

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "converter" / "zoo" / "weights" / "detector.keras"
SIZE = read_sidecar(WEIGHTS)[0].input_size
THRESHOLD = 0.4  # Frigate's CPU detector drops rows scoring below this
FRIGATE_MAX = 20  # and reads at most this many rows
FRAMES = 12


def frigate_cpu_detect(model_path: Path, rgb: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
    """(class id, score, [ymin, xmin, ymax, xmax] in [0, 1]) per kept row, as Frigate reads them."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_path), num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, SIZE, SIZE, 3]
    interp.set_tensor(inp["index"], rgb[np.newaxis].astype(np.uint8))
    interp.invoke()
    out = interp.get_output_details()
    boxes = interp.get_tensor(out[0]["index"])[0]
    classes = interp.get_tensor(out[1]["index"])[0]
    scores = interp.get_tensor(out[2]["index"])[0]
    count = int(interp.get_tensor(out[3]["index"])[0])
    rows = []
    for i in range(count):
        if scores[i] < THRESHOLD or i == FRIGATE_MAX:
            break
        rows.append((int(classes[i]), float(scores[i]), boxes[i].astype(np.float64)))
    return rows


@pytest.fixture(scope="module")
def uint8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference detector converted with --input-dtype uint8 for x86-avx2."""
    work = tmp_path_factory.mktemp("frigate")
    calib = work / "calib"
    calib.mkdir()
    for i, s in enumerate(generate("train", 32, size=SIZE)):
        cv2.imwrite(str(calib / f"{i:03d}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
    out = work / "bundle"
    res = CliRunner().invoke(
        convert_cli,
        ["convert", str(WEIGHTS), "--profile", "x86-avx2", "--input-dtype", "uint8",
         "--calibration", str(calib), "--validation-samples", "24", "--latency-runs", "3", "--name", "frigate-detector",
         "--version", "1", "--force", "--output", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def test_converted_detector_lists_outputs_in_the_conventional_order(uint8_bundle: Path) -> None:
    manifest = load_bundle(uint8_bundle).manifest
    assert manifest.input.dtype == "uint8"
    # pixels go in as they come: (p / 255) quantized with scale 1/255 and zero point 0 is p
    assert manifest.input.mean == [0.0] and manifest.input.std == [255.0]
    assert abs(manifest.input.scale * 255 - 1) < 1e-6 and manifest.input.zero_point == 0
    roles = [o.role.value for o in manifest.outputs]
    assert roles == ["boxes", "classes", "scores", "count"]
    model_bytes = (uint8_bundle / "model.tflite").read_bytes()
    assert output_indices(model_bytes) == [o.index for o in manifest.outputs]


def test_frigate_reader_and_agent_find_the_same_detections(
    uint8_bundle: Path, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    images = [s.image for s in generate("test", FRAMES, size=SIZE)]
    for i, rgb in enumerate(images):  # model-sized frames: neither side resizes
        cv2.imwrite(str(frames / f"{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "detections.jsonl"
    res = CliRunner().invoke(
        agent_cli,
        ["run", "--bundle", str(uint8_bundle), "--source", str(frames), "--rate", "all",
         "--jsonl", str(out), "--score-threshold", str(THRESHOLD), "--max-detections", "20"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    messages = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(messages) == FRAMES
    model = uint8_bundle / "model.tflite"
    total = 0
    for rgb, msg in zip(images, messages, strict=True):
        frigate = frigate_cpu_detect(model, rgb)
        agent = msg["detections"]
        assert len(agent) == len(frigate), (frigate, agent)
        for (cls, score, yxyx), det in zip(frigate, agent, strict=True):
            assert det["label"] == CLASSES[cls]
            assert det["score"] == pytest.approx(score, abs=1e-4)
            ymin, xmin, ymax, xmax = yxyx * SIZE
            assert det["box"] == pytest.approx([xmin, ymin, xmax, ymax], abs=0.05)
        total += len(agent)
    assert total >= FRAMES  # the shapes are found: the comparison is not vacuous


def test_reorder_outputs_refuses_what_is_not_a_permutation(uint8_bundle: Path) -> None:
    model_bytes = (uint8_bundle / "model.tflite").read_bytes()
    current = output_indices(model_bytes)
    swapped = reorder_outputs(model_bytes, current[::-1])
    assert output_indices(swapped) == current[::-1] and len(swapped) == len(model_bytes)
    with pytest.raises(ValueError, match="not a permutation"):
        reorder_outputs(model_bytes, [*current[:-1], 9999])


def test_input_dtype_needs_an_integer_scheme(tmp_path: Path) -> None:
    import yaml

    from firmware_profiles import load_profile

    doc = load_profile("x86-avx2").model_dump(mode="json")
    doc["name"] = "x86-float16"
    doc["quantization"] = {"scheme": "float16", "input_dtype": "float32", "output_dtype": "float32"}
    profile = tmp_path / "x86-float16.yaml"
    profile.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(
        convert_cli,
        ["convert", str(WEIGHTS), "--profile", str(profile), "--input-dtype", "uint8",
         "--calibration", str(tmp_path), "--output", str(tmp_path / "out")],
    )  # fmt: skip
    assert res.exit_code != 0
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert "--input-dtype uint8 needs scheme int8 or int8-fallback" in line and "float16" in line
    assert not (tmp_path / "out").exists()
