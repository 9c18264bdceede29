"""`edgegap models rollback`: offer an earlier version's model again.

A channel only accepts a version above its current one, so the stored int8 bundle of version N
is re-issued under a new version number, above the channel's (stable, canary and its last
rollout) and above the registry's highest, and signed again. Its model file is the same bytes,
so a device that still holds that model in its store activates it without downloading it.
The re-issue is a version of its own in the registry: its parent is N, its training record
says {"rollback_of": N}, its status says how the publish went.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle.loading import load_bundle, write_bundle
from agent.bundle.manifest import Manifest
from agent.bundle.signing import load_private_key, sign_manifest
from agent.errors import EdgegapError
from agent.updates.protocol import STABLE, Topics
from converter.broker_client import BrokerOptions, Connection
from converter.refresh.registry import Registry, RegistryError, Version, now

logger = logging.getLogger(__name__)

REFUSED = ("rejected", "halted")  # a gate failed, or the canaries stopped it: only with --force


@dataclass(frozen=True)
class RolledBack:
    original: int
    version: Version  # the new version, as recorded
    sha256: str  # of the model file, the same as the original's
    published: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.version.status == "published"


def check(registry: Registry, version: int, sign_key: Path | None, force: bool) -> Path:
    """The version's stored bundle, once the version may be rolled back to; else a one-line
    RegistryError (or SignatureError for the key)."""
    record = registry.get(version)
    bundle = registry.bundle(version)
    if bundle is None:
        raise RegistryError(
            f"v{version} has no int8 bundle in {registry.root}: nothing to re-issue"
        )
    if record.status in REFUSED and not force:
        failed = [str(g["name"]) for g in record.gates if g.get("status") == "fail"]
        raise RegistryError(
            f"v{version} was {record.status} ({', '.join(failed) or 'see edgegap models show'}); "
            "pass --force to roll back to it anyway"
        )
    if not registry.model(version).is_file():
        raise RegistryError(f"v{version}'s float model {registry.model(version)} is missing")
    if sign_key is None:
        raise RegistryError("a rollback is signed again: give --sign-key")
    load_private_key(sign_key)  # a missing or bad key, before anything is sent
    load_bundle(bundle)  # the stored model must still be the bytes its manifest names
    return bundle


def channel_version(conn: Connection, topics: Topics, channel: str) -> int:
    """The highest version the channel knows: stable, canary, or its last rollout (0: none)."""
    from converter.publishing import current_release
    from converter.rollout import read_record

    known = [0]
    for stage in (STABLE, "canary"):
        release = current_release(conn, topics, channel, stage)
        if release is not None:
            known.append(release.manifest.version)
    record = read_record(conn, topics, channel)
    if record is not None:
        known.append(record.version)
    return max(known)


def next_version(registry: Registry, channel_at: int) -> int:
    """UTC time as YYYYMMDDHHMMSS (as convert numbers bundles), above the channel and registry."""
    highest = max((v.version for v in registry.versions()), default=0)
    stamp = int(time.strftime("%Y%m%d%H%M%S", time.gmtime()))
    return max(stamp, highest + 1, channel_at + 1)


def reissue(bundle: Path, version: int, sign_key: Path, out: Path) -> Manifest:
    """The stored bundle under a new version, signed with sign_key: the same model bytes."""
    stored = load_bundle(bundle)
    manifest = stored.manifest.model_copy(update={"version": version, "signature": None})
    manifest = sign_manifest(manifest, load_private_key(sign_key))
    write_bundle(out, stored.model_bytes(), manifest)
    return manifest


def rollback(
    registry: Registry,
    version: int,
    target: tuple[BrokerOptions, Topics, str],
    sign_key: Path | None,
    publish: Callable[[Path], dict[str, Any]],
    force: bool = False,
    say: Callable[[str], None] = logger.info,
) -> RolledBack:
    """Re-issue version's bundle above the channel's version, publish it, record it."""
    broker, topics, channel = target
    bundle = check(registry, version, sign_key, force)
    assert sign_key is not None
    with Connection(broker, "rollback") as conn:
        channel_at = channel_version(conn, topics, channel)
    new = next_version(registry, channel_at)
    original = registry.get(version)
    with tempfile.TemporaryDirectory(prefix="edgegap-rollback-") as tmp:
        manifest = reissue(bundle, new, sign_key, Path(tmp) / "bundle")
        was = f"at v{channel_at}" if channel_at else "empty"
        say(f"v{version} re-issued as v{new} (the channel was {was}); publishing")
        try:
            done = publish(Path(tmp) / "bundle")
        except EdgegapError as exc:
            done = {"promoted": False, "rollout": "not published", "reason": str(exc)}
        done["at"] = now()
        status = "published" if done.get("promoted", True) else (
            "halted" if done.get("rollout") == "halted" else "not published"
        )  # fmt: skip
        record = Version(
            new, version, now(), status, "", data=dict(original.data),
            training={"rollback_of": version}, gates=list(original.gates),
            accuracy=dict(original.accuracy), published=done,
        )  # fmt: skip
        registry.add(record, registry.model(version), Path(tmp) / "bundle")
    logger.info("v%d re-issued as v%d: %s", version, new, status)
    return RolledBack(version, record, manifest.model.sha256, done)
