"""The steps of a refresh (converter.refresh.loop): the deployed version as a baseline bundle,
the fine-tune, the conversion through the converter's pipeline, and the gates."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from converter.gates import GateResult
from converter.options import ConvertOptions
from converter.refresh import recipe
from converter.refresh.gates import Scores, regression_gates, score
from converter.refresh.options import RefreshOptions, RefreshOutcome
from converter.refresh.registry import Registry, Version, now
from converter.tasks.detection_folder import DetectionFolder

logger = logging.getLogger(__name__)


def new_version(parent: int | None) -> int:
    """UTC time as YYYYMMDDHHMMSS, as convert numbers bundles, and above the parent's."""
    stamp = int(time.strftime("%Y%m%d%H%M%S", time.gmtime()))
    return max(stamp, (parent or 0) + 1)


def calibration_folder(opts: RefreshOptions, out: Path) -> Path:
    """Images that stand for both domains the model must serve: captures and replay images.
    Calibrated on captures alone, the int8 ranges fit the new domain and cost the old one (on
    the benchmark: domain-a mAP@0.5 0.92 float, 0.83 int8)."""
    import cv2

    from converter.refresh.captures import read_captures
    from converter.refresh.train import replay_images
    from converter.tasks.detector_config import read_sidecar

    if out.is_dir():
        return out
    out.mkdir(parents=True)
    captures = read_captures(opts.data)
    entries = captures.images
    each = max(1, opts.calibration_samples // 2)
    step = max(1, len(entries) // each)
    for i, entry in enumerate(entries[::step][:each]):
        shutil.copyfile(captures.file(entry), out / f"c{i:04d}{captures.file(entry).suffix}")
    cfg, _ = read_sidecar(opts.student)
    replay = replay_images(cfg, each, opts.replay, opts.train.seed + 1)
    for i, image in enumerate(replay.images):
        cv2.imwrite(str(out / f"r{i:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return out


def convert_bundle(
    opts: RefreshOptions, model: Path, out: Path, version: int, name: str, force: bool
) -> tuple[Any, ConvertOptions]:
    """The converter's pipeline, as `edgegap convert` runs it: calibrated on captures and
    replay images, the accuracy gate on the new holdout. The result and the options (the
    version's recipe, converter.refresh.recipe)."""
    from converter.pipeline import convert

    calibration = calibration_folder(opts, out.parent / "calibration")
    options = ConvertOptions(
        model=model, profile=opts.profile, calibration=calibration,
        validation=opts.holdout, output=out, sign_key=opts.sign_key, name=name,
        version=version, force=force, prune=opts.prune, validation_samples=300,
        calibration_samples=opts.calibration_samples,
        latency_runs=20,
    )  # fmt: skip
    return convert(options), options


def parent_version(
    registry: Registry, opts: RefreshOptions, work: Path, say: Callable[[str], None]
) -> Version:
    """The deployed version: the registry's record of the student, or the student imported
    (converted as it is, a baseline bundle for the gates)."""
    found = registry.find_model(opts.student)
    if found is not None and registry.bundle(found.version) is not None:
        say(f"deployed version: v{found.version} from the registry")
        return found
    version = found.version if found else new_version(None)
    name = opts.name or _name(opts.student)
    say(f"deployed version: importing {opts.student} as v{version} (converting a baseline)")
    result, options = convert_bundle(opts, opts.student, work / "parent", version, name, True)
    record = found or Version(
        version, None, now(), "imported", "", data={"model": str(opts.student)}
    )
    record.gates = [asdict(g) for g in result.gates]
    record.conversion = recipe.keep(registry, version, options)
    if found is None:
        return registry.add(record, opts.student, work / "parent")
    registry.add_bundle(found.version, work / "parent")
    return record


def _name(model: Path) -> str:
    from converter.prepare import default_name

    return default_name(model)


def train_candidate(
    opts: RefreshOptions, out: Path, say: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune a copy of the student; write it (with its sidecar) to out; the training record."""
    import keras

    from converter.refresh.captures import labelled_images, read_captures
    from converter.refresh.relabel import load_teacher
    from converter.refresh.train import CorrectedTeacher, fine_tune, replay_images
    from converter.tasks.detector_config import read_sidecar, write_sidecar
    from converter.zoo.training import save_weights_only_model

    cfg, doc = read_sidecar(opts.student)
    teacher, _ = load_teacher(opts.teacher or opts.student)
    student = keras.models.load_model(opts.student, compile=False)
    keras.utils.set_random_seed(opts.train.seed)
    new = labelled_images(read_captures(opts.data), cfg.input_size, list(cfg.classes))
    replay = replay_images(
        cfg, round(len(new.images) * opts.train.replay), opts.replay, opts.train.seed
    )
    say(f"fine-tune: {len(new.images)} new images + {len(replay.images)} replay images, "
        f"{opts.train.epochs} epochs, distilled from {Path(opts.teacher or opts.student).name}")  # fmt: skip
    result = fine_tune(
        student, CorrectedTeacher(teacher, cfg, len(new.images)), cfg, new, replay, opts.train
    )
    save_weights_only_model(student, cfg, out)
    record = {
        **asdict(opts.train), "from": str(opts.student), "teacher": str(opts.teacher or opts.student),
        "data": str(opts.data), "new_images": len(new.images), "replay_images": len(replay.images),
        "replay_from": str(opts.replay or "generated domain a train split"),
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "val_loss": round(result.best_val_loss, 5), "start_val_loss": round(result.start_val_loss, 5),
    }  # fmt: skip
    write_sidecar(out, cfg, {"training": doc.get("training", {}), "refresh": record})
    return out, record


def gate(
    opts: RefreshOptions,
    registry: Registry,
    parent: Version,
    holdouts: tuple[DetectionFolder, DetectionFolder],
    candidate: tuple[int, Path, list[GateResult]],
) -> RefreshOutcome:
    """The convert gates and the regression gates; the candidate's record (not yet saved)."""
    version, bundle, convert_gates = candidate
    old, new = holdouts
    parent_bundle = registry.bundle(parent.version)
    assert parent_bundle is not None
    deployed = score(parent_bundle, old, new)
    cand = score(bundle, old, new)
    gates = convert_gates + regression_gates(
        cand, deployed, opts.profile.budgets.max_accuracy_drop, opts.min_gain
    )
    failed = [g for g in gates if not g.passed]
    record = Version(
        version, parent.version, now(), "rejected" if failed else "passed", "",
        data={"captures": str(opts.data), "holdout": str(opts.holdout),
              "old_holdout": str(opts.old_holdout or "generated domain a test split")},
        gates=[asdict(g) for g in gates],
        accuracy={"old": round(cand.old, 4), "new": round(cand.new, 4)},
    )  # fmt: skip
    parent.accuracy = {"old": round(deployed.old, 4), "new": round(deployed.new, 4)}
    registry.save(parent)
    reason = "; ".join(f"{g.name}: {g.reason or g.value}" for g in failed)
    return RefreshOutcome(record, parent, not failed, reason, gates, cand, deployed, {})


__all__ = ["Scores", "convert_bundle", "gate", "new_version", "parent_version", "train_candidate"]
