"""The refresh's regression gates: the candidate's int8 bundle against the deployed one's, on a
fixed held-out set of the old domain and on a held-out set of the new captures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from converter.gates import FAIL, PASS, GateResult
from converter.tasks.detection_folder import DatasetError, DetectionFolder, read_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """int8 mAP@0.5 of one bundle on the old-domain and new-domain holdouts."""

    old: float
    new: float


def read_holdout(path: Path, what: str) -> DetectionFolder:
    """A held-out folder with ground truth; DatasetError in one line if it has no labels."""
    folder = read_folder(path)
    if len(folder) == 0:
        raise DatasetError(f"{what} {path} has no images")
    if sum(len(b) for b in folder.boxes) == 0:
        raise DatasetError(f"{what} {path} has no labels: its annotations.json holds no boxes")
    return folder


def score(bundle: Path, old: DetectionFolder, new: DetectionFolder, threads: int = 2) -> Scores:
    from converter.zoo.evaluate import evaluate_bundle

    return Scores(
        evaluate_bundle(bundle, old, threads).result.map50,
        evaluate_bundle(bundle, new, threads).result.map50,
    )


def regression_gates(
    candidate: Scores, deployed: Scores, max_drop: float, min_gain: float
) -> list[GateResult]:
    """Not worse on the old domain by more than max_drop; better on the new one by more than
    min_gain (0: strictly better)."""
    drop = deployed.old - candidate.old
    gain = candidate.new - deployed.new
    old_ok = drop <= max_drop + 1e-9
    new_ok = gain > min_gain
    return [
        GateResult(
            "old domain", PASS if old_ok else FAIL,
            f"mAP@0.5 {candidate.old:.4f} (deployed {deployed.old:.4f})",
            f"drop <= {max_drop:.4f}",
            "" if old_ok else f"forgets the old domain: drop {drop:.4f} > {max_drop:.4f}",
        ),
        GateResult(
            "new domain", PASS if new_ok else FAIL,
            f"mAP@0.5 {candidate.new:.4f} (deployed {deployed.new:.4f})",
            f"gain > {min_gain:.4f}",
            "" if new_ok else f"not better on the new captures: gain {gain:+.4f}",
        ),
    ]  # fmt: skip
