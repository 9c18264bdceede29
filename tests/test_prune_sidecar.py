"""`edgegap prune` on the reference detector keeps it a detector: the sidecar goes with the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")

from converter.cli import cli  # noqa: E402
from converter.tasks.detector_config import read_sidecar, sidecar_path  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1] / "converter" / "zoo" / "weights" / "detector.keras"


def test_prune_copies_detector_sidecar_and_keeps_anchor_count(tmp_path: Path) -> None:
    import keras

    out = tmp_path / "pruned.keras"
    res = CliRunner().invoke(
        cli, ["prune", str(REFERENCE), "--channels", "0.5", "--output", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(sidecar_path(out).read_text()) == json.loads(
        sidecar_path(REFERENCE).read_text()
    )
    cfg, _ = read_sidecar(out)
    pruned = keras.models.load_model(out, compile=False)
    original = keras.models.load_model(REFERENCE, compile=False)
    assert [tuple(o.shape) for o in pruned.outputs] == [tuple(o.shape) for o in original.outputs]
    assert pruned.outputs[0].shape[1] == cfg.anchors.count
    assert pruned.count_params() < original.count_params()
