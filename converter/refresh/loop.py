"""`edgegap refresh`: fine-tune the deployed detector on pseudo-labelled captures, convert and gate
it as `convert` does, check it against the deployed version, and publish it."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import EdgegapError
from converter.gates import GateResult
from converter.refresh import recipe
from converter.refresh.captures import read_captures
from converter.refresh.gates import read_holdout
from converter.refresh.options import RefreshError, RefreshOptions, RefreshOutcome
from converter.refresh.registry import Registry, Version, now
from converter.tasks.detection_folder import DatasetError, DetectionFolder

logger = logging.getLogger(__name__)

__all__ = ["RefreshError", "RefreshOptions", "RefreshOutcome", "check_inputs", "refresh"]

OLD_HOLDOUT_COUNT = 200  # generated domain a test images when no --old-holdout is given


def _step(seconds: dict[str, float], name: str, started: float) -> float:
    t = time.monotonic()
    seconds[name] = round(t - started, 1)
    return t


def refresh(opts: RefreshOptions, say: Callable[[str], None] = logger.info) -> RefreshOutcome:
    """The whole refresh; a rejected candidate is kept in the registry with its gates."""
    from converter.loading import import_tf, quiet_native_stderr
    from converter.refresh import steps

    checked = _check(opts)
    import_tf()
    registry = Registry(opts.registry)
    seconds: dict[str, float] = {}
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgegap-refresh-") as tmp, quiet_native_stderr():
        work = Path(tmp)
        old = checked.old or _generated_old_holdout(work / "old-holdout", opts.student)
        parent = steps.parent_version(registry, opts, work, say)
        t = _step(seconds, "deployed version", t)
        model, record = steps.train_candidate(opts, work / "candidate.keras", say)
        t = _step(seconds, "fine-tune", t)
        version = opts.version or steps.new_version(parent.version)
        name = _bundle_name(registry, parent, opts)
        say(f"convert v{version} for {opts.profile.name} (the converter's pipeline and gates)")
        result, options = steps.convert_bundle(opts, model, work / "bundle", version, name, True)
        t = _step(seconds, "convert", t)
        say("regression gates: candidate and deployed int8 bundles on both holdouts")
        candidate = (version, work / "bundle", list(result.gates))
        outcome = steps.gate(opts, registry, parent, (old, checked.new), candidate)
        t = _step(seconds, "regression gates", t)
        outcome.version.training = record
        outcome.seconds = seconds
        if outcome.passed and opts.publish is not None:
            _publish(opts, outcome, work / "bundle", say)
            _step(seconds, "publish", t)
        outcome.version.conversion = recipe.keep(registry, version, options)
        registry.add(outcome.version, model, work / "bundle")
    return outcome


def _publish(
    opts: RefreshOptions, outcome: RefreshOutcome, bundle: Path, say: Callable[[str], None]
) -> None:
    """Publish to the first stage; a rollout the canaries halted fails the refresh."""
    assert opts.publish is not None
    say(f"publish v{outcome.version.version}")
    try:
        done = opts.publish(bundle)
    except EdgegapError as exc:  # no canary online, a version not above the channel's, ...
        done = {"promoted": False, "rollout": "not published", "reason": str(exc)}
    outcome.version.published = {**done, "at": now()}
    if done.get("promoted", True):
        outcome.version.status = "published"
        return
    outcome.version.status = "halted" if done.get("rollout") == "halted" else "not published"
    outcome.passed = False
    outcome.reason = f"{outcome.version.status}: {done.get('reason', '')}"
    outcome.gates.append(GateResult("canary", "fail", str(done.get("rollout")), "promoted",
                                    str(done.get("reason", ""))))  # fmt: skip


def _bundle_name(registry: Registry, parent: Version, opts: RefreshOptions) -> str:
    """The deployed bundle's name, so the device sees the same model refreshed."""
    if opts.name:
        return opts.name
    from agent.bundle.loading import read_manifest

    bundle = registry.bundle(parent.version)
    assert bundle is not None
    return read_manifest(bundle).name


@dataclass
class _Checked:
    new: DetectionFolder
    old: DetectionFolder | None


def _check(opts: RefreshOptions) -> _Checked:
    """Every input read or checked before any training: one-line errors for bad ones."""
    checked = check_inputs(opts)
    captures = read_captures(opts.data)
    if not any("label" in e for e in captures.images):
        raise DatasetError(
            f"{opts.data} has no labelled captures: run `edgegap relabel {opts.data} --teacher MODEL`"
        )
    return checked


def check_inputs(opts: RefreshOptions) -> _Checked:
    """The models, the signing key and the holdouts (all but the captures), read or checked."""
    from converter.tasks.detector_config import read_sidecar

    for what, path in (("student", opts.student), ("teacher", opts.teacher)):
        if path is not None and not Path(path).is_file():
            raise RefreshError(f"{what} model not found: {path}")
        if path is not None:
            read_sidecar(Path(path))
    if opts.sign_key is not None and not Path(opts.sign_key).is_file():
        raise RefreshError(f"signing key not found: {opts.sign_key}")
    new = read_holdout(opts.holdout, "holdout")
    old = read_holdout(opts.old_holdout, "old-domain holdout") if opts.old_holdout else None
    return _Checked(new, old)


def _generated_old_holdout(out: Path, student: Path) -> DetectionFolder:
    from converter.tasks.detector_config import read_sidecar
    from converter.zoo.detection_data import generate, write_folder

    cfg, _ = read_sidecar(student)
    samples = list(generate("test", OLD_HOLDOUT_COUNT, seed=0, size=cfg.input_size))
    write_folder(out, samples, {"split": "test", "domain": "a"})
    return read_holdout(out, "old-domain holdout")
