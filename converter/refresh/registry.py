"""The model registry: a folder of versions, each with its float model, its int8 bundle, its
parent, the data it was trained on and its gate results.

    REGISTRY/v<version>/model.keras (+ model.detector.json)   the float model
    REGISTRY/v<version>/bundle/                               the signed int8 bundle, if built
    REGISTRY/v<version>/conversion/                           the data it was converted with
    REGISTRY/.pool/                                           that data, each file once
    REGISTRY/v<version>/record.json                           parent, data, gates, status

Versions are the bundles' versions, so the registry and the channel speak of the same numbers.
A record is written last (atomically): a folder without one is an unfinished version and is not
listed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

RECORD = "record.json"
MODEL = "model.keras"
BUNDLE = "bundle"


class RegistryError(EdgegapError, ValueError):
    """A registry or version that is missing or malformed."""


@dataclass
class Version:
    version: int
    parent: int | None
    created: str
    status: str  # imported, passed, published, rejected, halted, not published
    sha256: str  # of the float model file
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)  # holdout name -> int8 mAP@0.5
    published: dict[str, Any] = field(default_factory=dict)  # channel, stage, when
    conversion: dict[str, Any] = field(default_factory=dict)  # the recipe (refresh.recipe)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Version:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in names})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """The versions under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, version: int) -> Path:
        return self.root / f"v{int(version)}"

    def model(self, version: int) -> Path:
        return self.folder(version) / MODEL

    def bundle(self, version: int) -> Path | None:
        b = self.folder(version) / BUNDLE
        return b if (b / "manifest.json").is_file() else None

    def versions(self) -> list[Version]:
        if not self.root.is_dir():
            return []
        out = []
        for rec in self.root.glob(f"v*/{RECORD}"):
            try:
                out.append(Version.from_dict(json.loads(rec.read_text())))
            except (ValueError, TypeError) as exc:
                logger.warning("skipping %s: %s", rec, exc)
        return sorted(out, key=lambda v: v.version)

    def get(self, version: int) -> Version:
        for v in self.versions():
            if v.version == version:
                return v
        raise RegistryError(f"version {version} is not in the registry {self.root}")

    def find_model(self, model: Path) -> Version | None:
        """The version whose float model has the same bytes as model."""
        sha = file_sha256(model)
        return next((v for v in self.versions() if v.sha256 == sha), None)

    def add(self, record: Version, model: Path, bundle: Path | None = None) -> Version:
        """Copy model (with its sidecar) and bundle into the version's folder, then the record."""
        from converter.tasks.detector_config import sidecar_path

        folder = self.folder(record.version)
        if (folder / RECORD).exists():
            raise RegistryError(f"version {record.version} is already in the registry {self.root}")
        folder.mkdir(parents=True, exist_ok=True)
        if Path(model).resolve() != (folder / MODEL).resolve():
            shutil.copyfile(model, folder / MODEL)
            if sidecar_path(Path(model)).is_file():
                shutil.copyfile(sidecar_path(Path(model)), sidecar_path(folder / MODEL))
        if bundle is not None and Path(bundle).resolve() != (folder / BUNDLE).resolve():
            shutil.copytree(bundle, folder / BUNDLE, dirs_exist_ok=True)
        record.sha256 = file_sha256(folder / MODEL)
        self.save(record)
        return record

    def add_bundle(self, version: int, bundle: Path) -> None:
        shutil.copytree(bundle, self.folder(version) / BUNDLE, dirs_exist_ok=True)

    def save(self, record: Version) -> None:
        path = self.folder(record.version) / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record), indent=1) + "\n")
        tmp.replace(path)

    def lineage(self, version: int) -> list[Version]:
        """version, its parent, and so on back to the first."""
        chain, seen = [], set()
        current: int | None = version
        while current is not None and current not in seen:
            seen.add(current)
            v = self.get(current)
            chain.append(v)
            current = v.parent
        return chain

    def deployed(self) -> Version | None:
        """The newest version that was published (the one the channel offers)."""
        live = [v for v in self.versions() if v.published and v.status == "published"]
        return live[-1] if live else None
