"""A version's conversion recipe: what `edgegap models rebuild` needs to convert its float model
again as it was converted.

The recipe is the conversion's options (converter.options.ConvertOptions) as JSON, with the
profile written out in full (a profile file may change or be gone) and the data the conversion
read (calibration, validation, a labels file) copied into the version's folder:

    REGISTRY/v<version>/conversion/calibration/   (or calibration.npz, ...)
    REGISTRY/v<version>/conversion/validation/
    REGISTRY/.pool/<sha256>                        each kept file once, hard-linked from the above
    record.json "conversion": {"options": {...}, "profile": {...}, "tensorflow": "2.21.0", ...}

The model, the output folder, the signing key and the version are not part of it: a rebuild
converts the registry's float model, writes where it is told and keeps the version's number.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from enum import Enum
from pathlib import Path
from typing import Any

from agent.bundle.manifest import ColorOrder, ResizeMode
from converter.options import ConvertOptions
from converter.refresh.registry import Registry, RegistryError, file_sha256
from firmware_profiles import IODtype, Profile

logger = logging.getLogger(__name__)

FOLDER = "conversion"
# Kept files are hard links into REGISTRY/.pool/<sha256>: the versions of one refresh (and the
# rounds of a watch) share their holdout and replay images instead of copying them again.
POOL = ".pool"
DATA_FIELDS = ("calibration", "validation", "labels")
NOT_KEPT = ("model", "output", "sign_key", "version", "profile")
ENUMS: dict[str, type[Enum]] = {
    "color_order": ColorOrder,
    "resize": ResizeMode,
    "input_dtype": IODtype,
}
TUPLES = ("fallback_budget", "input_shape", "custom_objects", "protect")


def tf_version() -> str:
    try:
        import tensorflow as tf

        return str(tf.__version__)
    except ImportError:  # pragma: no cover - the host install has TensorFlow
        return "unknown"


def _pooled(registry: Registry, source: Path, dest: Path) -> None:
    """dest as a hard link to the pool's copy of source's bytes (a copy where links fail)."""
    pooled = registry.root / POOL / file_sha256(source)
    if not pooled.is_file():
        pooled.parent.mkdir(parents=True, exist_ok=True)
        tmp = pooled.with_name(pooled.name + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(pooled)
    try:
        os.link(pooled, dest)
    except OSError:
        shutil.copyfile(pooled, dest)


def _copy(registry: Registry, source: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    if not source.is_dir():
        _pooled(registry, source, dest)
        return
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _pooled(registry, path, target)


def _value(name: str, value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [str(v) if isinstance(v, Path) else v for v in value]
    if name == "task" and not isinstance(value, str):
        return str(value.name)
    return value


def keep(registry: Registry, version: int, opts: ConvertOptions) -> dict[str, Any]:
    """Copy the conversion's data into the version's folder; the recipe for its record.
    Data given in memory (a Dataset) cannot be kept: the recipe then says why, and a rebuild
    of that version stops with that reason."""
    out = registry.folder(version) / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    for f in dataclasses.fields(ConvertOptions):
        if f.name in NOT_KEPT:
            continue
        value = getattr(opts, f.name)
        if f.name in DATA_FIELDS and value is not None and not isinstance(value, list):
            if not isinstance(value, (str, Path)):
                return {"missing": f"its {f.name} data was given in memory, not as a file"}
            source = Path(value)
            kept = f"{FOLDER}/{f.name}{'' if source.is_dir() else source.suffix}"
            _copy(registry, source, registry.folder(version) / kept)
            options[f.name] = kept
            continue
        options[f.name] = _value(f.name, value)
    return {
        "options": options,
        "profile": opts.profile.model_dump(mode="json"),
        "tensorflow": tf_version(),
    }


def options(
    registry: Registry, version: int, recipe: dict[str, Any], model: Path, output: Path
) -> ConvertOptions:
    """The ConvertOptions a recipe records, reading the data kept in the version's folder."""
    if not recipe.get("options"):
        why = recipe.get("missing", "it was recorded before conversion recipes were kept")
        raise RegistryError(
            f"v{version} cannot be rebuilt: {why}; convert "
            f"{registry.model(version)} with `edgegap convert` instead"
        )
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(ConvertOptions)}
    for name, value in recipe["options"].items():
        if name not in names:
            raise RegistryError(f"v{version}'s recipe has an unknown option {name!r}")
        if name in DATA_FIELDS and isinstance(value, str):
            value = registry.folder(version) / value
            if not value.exists():
                raise RegistryError(f"v{version} cannot be rebuilt: {value} is missing")
        elif name in ENUMS and value is not None:
            value = ENUMS[name](value)
        elif name in TUPLES and value is not None:
            value = tuple(value)
        kwargs[name] = value
    profile = Profile.model_validate(recipe["profile"])
    return ConvertOptions(model=model, profile=profile, output=output, version=version, **kwargs)
