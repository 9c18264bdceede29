"""`edgegap prune` on a detector: heads protected, fine-tuned with the detection task loss on a
COCO-style folder, or by detection distillation alone on plain images."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from test_detector import one_line_error

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")

from agent.geometry.anchors import AnchorConfig  # noqa: E402
from converter.tasks.detection_folder import IMAGES_DIR  # noqa: E402
from converter.tasks.detector_config import DetectorConfig, read_sidecar, write_sidecar  # noqa: E402
from converter.zoo import detection_data as dd  # noqa: E402
from converter.zoo.finetune import detection_targets, detection_task_loss  # noqa: E402

SIZE = 64
HEADS = [f"head{i}_{k}_out" for i in range(3) for k in ("box", "cls")]


def run(*args: Any) -> Result:
    from converter.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny untrained detector with its sidecar, a labelled folder and the same images bare."""
    import keras

    from converter.zoo.detector import build_detector

    root = tmp_path_factory.mktemp("det")
    cfg = DetectorConfig(input_size=SIZE, width=0.25, anchors=AnchorConfig.for_input(SIZE))
    keras.utils.set_random_seed(0)
    model_path = root / "det.keras"
    build_detector(cfg).save(model_path)
    write_sidecar(model_path, cfg)
    coco = root / "coco"
    dd.write_folder(coco, list(dd.generate("train", 12, size=SIZE)))
    plain = root / "plain"
    shutil.copytree(coco / IMAGES_DIR, plain)
    return {"root": root, "model": model_path, "coco": coco, "plain": plain}


def _check_pruned(original: Path, out: Path) -> None:
    import keras

    before = keras.models.load_model(original, compile=False)
    after = keras.models.load_model(out, compile=False)
    assert [tuple(o.shape) for o in after.outputs] == [tuple(o.shape) for o in before.outputs]
    for name in HEADS:
        assert after.get_layer(name).filters == before.get_layer(name).filters, name
    assert after.count_params() < before.count_params()
    assert read_sidecar(out)[0] == read_sidecar(original)[0]


def test_targets_and_task_loss_fit_the_detector(files: dict[str, Path]) -> None:
    cfg, _ = read_sidecar(files["model"])
    samples = list(dd.generate("train", 3, size=SIZE))
    box_t, cls_t = detection_targets(cfg, [s.boxes for s in samples], [s.classes for s in samples])
    a, c = cfg.anchors.count, cfg.num_classes
    assert box_t.shape == (3, a, 5) and cls_t.shape == (3, a, c + 1)
    for s, flags in zip(samples, box_t[..., 4], strict=True):
        assert flags.sum() >= len(s.boxes)  # every ground-truth box keeps at least one anchor
    untrained = [np.zeros((3, a, 4), np.float32), np.full((3, a, c), -4.6, np.float32)]
    perfect = [box_t[..., :4], np.where(cls_t[..., :-1] > 0, 8.0, -8.0).astype(np.float32)]
    y = [box_t, cls_t]
    assert float(detection_task_loss(perfect, y)) < 0.1 * float(detection_task_loss(untrained, y))


def test_prune_detector_with_task_loss_on_a_coco_folder(files: dict[str, Path]) -> None:
    out = files["root"] / "labelled" / "pruned.keras"
    # Taylor importance scores channels with the same detection loss the fine-tune uses.
    res = run("prune", files["model"], "--channels", "0.5", "--data", files["coco"], "--epochs", "1",
              "--importance", "taylor", "--batch-size", "4", "--output", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    expected = "fine-tune: detection task loss + distillation (alpha 0.5) on 12 labelled images"
    assert expected in res.output
    protected = res.output.split("head output convolutions protected:", 1)[1].split("\n\n", 1)[0]
    assert set(HEADS) <= set(protected.replace(",", " ").split())
    assert "fine-tune 1: 1 epoch(s)" in res.output
    _check_pruned(files["model"], out)


def test_prune_detector_on_plain_images_distils_alone(files: dict[str, Path]) -> None:
    out = files["root"] / "plain_out" / "pruned.keras"
    res = run("prune", files["model"], "--channels", "0.5", "--data", files["plain"], "--epochs", "1",
              "--batch-size", "4", "--output", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("fine-tune:"))
    assert "distillation alone" in line and "12 images" in line and "task loss" not in line
    _check_pruned(files["model"], out)


def test_prune_detector_bad_inputs(files: dict[str, Path]) -> None:
    out = files["root"] / "bad.keras"
    missing = files["root"] / "nowhere"
    line = one_line_error(run("prune", files["model"], "--channels", "0.5", "--data", missing,
                               "--output", out))  # fmt: skip
    assert "--data not found" in line and str(missing) in line
    line = one_line_error(run("prune", files["model"], "--channels", "0.5", "--data", files["coco"],
                               "--mean", "127.5", "--output", out))  # fmt: skip
    assert "sidecar sets the input normalization" in line and "--mean" in line
    assert not out.exists()
