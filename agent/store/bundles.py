"""The device's bundles on disk, by sha256, with the active, previous and good pointers.

Layout under the state directory:

    bundles/<sha256>/model.tflite, manifest.json   one folder per model, named by its sha256
    active, previous, good                         pointer files, each one sha256 and a newline
    rejected.json                                  {sha256: {"version", "reason", "ts"}}, bounded
    starts.json                                    {"sha256", "starts"}: the crash-loop counter

A bundle folder is built under a temp name inside bundles/ and renamed into place once complete,
and every pointer is switched with write, fsync, rename; so a crash at any moment leaves either
the old state or the new. Whatever is read back is checked anyway: a pointer must hold 64
lowercase hex digits before it is used as a path component, and must name a complete bundle
folder; else it is ignored (logged) and `active()` falls back to good, then previous.

The store checks that a bundle is consistent (the model hashes to the manifest's sha256); trust
(the signature) is the caller's business, e.g. `agent.bundle.loading.load_bundle(path, keys)`.
One process owns a state directory; within it, the methods are serialised by a lock.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from agent.atomic import TMP_PREFIX, atomic_write, fsync_dir
from agent.bundle.loading import MANIFEST_FILE, MODEL_FILE, BundleError, read_manifest
from agent.bundle.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from agent.store.files import (
    StoreError,
    clean_temp,
    is_sha256,
    people_errors,
    read_json,
    read_small,
    remove_file,
    remove_tree,
    sha256_of,
    write_hashed,
)
from agent.store.rejections import Rejections

logger = logging.getLogger(__name__)

Pointer = Literal["active", "previous", "good"]
POINTERS: tuple[Pointer, ...] = ("active", "previous", "good")
DEFAULT_CRASH_LIMIT = 3


class BundleStore:
    """Bundles by sha256 under state_dir, and which one is active, previous and good."""

    @people_errors("opening the bundle store")
    def __init__(self, state_dir: Path, crash_limit: int = DEFAULT_CRASH_LIMIT) -> None:
        if crash_limit < 1:
            raise StoreError(f"crash_limit must be at least 1, got {crash_limit}")
        self.state_dir = Path(state_dir)
        self.bundles_dir = self.state_dir / "bundles"
        self.crash_limit = crash_limit
        self._lock = threading.RLock()
        self.rejections = Rejections(self.state_dir / "rejected.json", self._lock)
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        clean_temp(self.state_dir)
        clean_temp(self.bundles_dir)

    # ---- reading --------------------------------------------------------------------------

    def path(self, sha: str) -> Path:
        """The folder of bundle sha (which may not exist); refuses anything but a sha256."""
        if not is_sha256(sha):
            raise StoreError(f"not a sha256: {sha[:80]!r}")
        return self.bundles_dir / sha

    def manifest(self, sha: str) -> Manifest:
        """The manifest of installed bundle sha; StoreError if it is missing or incomplete."""
        folder = self.path(sha)
        try:
            manifest = read_manifest(folder)
        except BundleError as exc:
            raise StoreError(f"bundle {sha[:12]}… is not usable: {exc}") from exc
        model = folder / MODEL_FILE
        if manifest.model.sha256 != sha:
            raise StoreError(
                f"bundle {sha[:12]}…: its manifest names model {manifest.model.sha256[:12]}…"
            )
        if not model.is_file() or model.stat().st_size != manifest.model.size:
            raise StoreError(
                f"bundle {sha[:12]}…: {MODEL_FILE} is missing or not {manifest.model.size} bytes"
            )
        return manifest

    def is_installed(self, sha: str) -> bool:
        """True if bundles/<sha> is a complete bundle (size checked; the full hash is load_bundle's)."""
        try:
            self.manifest(sha)
        except StoreError:
            return False
        return True

    def installed(self) -> list[str]:
        """The sha256 of every complete bundle in the store."""
        return sorted(
            e.name
            for e in self.bundles_dir.iterdir()
            if is_sha256(e.name) and self.is_installed(e.name)
        )

    def find_version(self, version: int) -> str | None:
        """The sha256 of an installed bundle of this manifest version (for a `pin` command)."""
        for sha in self.installed():
            if self.manifest(sha).version == version:
                return sha
        return None

    def sha(self, which: Pointer) -> str | None:
        """The sha256 a pointer names, if it names a complete bundle; None otherwise (logged)."""
        raw = read_small(self.state_dir / which, 128)
        if raw is None:
            return None
        text = raw.decode("ascii", errors="replace").strip()
        if not is_sha256(text):
            logger.warning(
                "ignoring the %s pointer: it does not hold a sha256 (%r)", which, text[:80]
            )
            return None
        if not self.is_installed(text):
            logger.warning(
                "ignoring the %s pointer: bundle %s… is missing or incomplete", which, text[:12]
            )
            return None
        return text

    def active(self) -> Path | None:
        """The bundle to serve: active, or if its pointer is unusable good, then previous (logged)."""
        sha = self._active_sha()
        return None if sha is None else self.path(sha)

    def previous(self) -> Path | None:
        sha = self.sha("previous")
        return None if sha is None else self.path(sha)

    def good(self) -> Path | None:
        sha = self.sha("good")
        return None if sha is None else self.path(sha)

    def _active_sha(self) -> str | None:
        sha = self.sha("active")
        if sha is not None:
            return sha
        fallbacks: tuple[Pointer, ...] = ("good", "previous")
        for which in fallbacks:
            fallback = self.sha(which)
            if fallback is not None:
                if (self.state_dir / "active").exists():
                    logger.warning(
                        "the active pointer is unusable; falling back to the %s bundle %s…",
                        which,
                        fallback[:12],
                    )
                return fallback
        return None

    # ---- installing -----------------------------------------------------------------------

    @people_errors("installing a bundle")
    def install(self, manifest: Manifest | bytes, model: Path | bytes | Iterable[bytes]) -> Path:
        """Put a bundle in the store as bundles/<sha256>/; returns its folder. model: a file, the
        bytes, or blocks of bytes in order (a download's staged chunks, `Staging.chunks()`).

        The folder's name is the sha256 of the model bytes, which must equal the manifest's
        model.sha256 (and its size the manifest's model.size), else StoreError. The folder is
        built under a temp name and renamed into place. Installing a model already present is a
        no-op, except that a different manifest for the same model replaces manifest.json
        (atomically): a bundle is its model, and a re-release of it may change the manifest.
        """
        parsed, manifest_bytes = _manifest_and_bytes(manifest)
        sha = parsed.model.sha256
        with self._lock:
            final = self.path(sha)
            if self.is_installed(sha) and sha256_of(final / MODEL_FILE) == sha:
                if read_small(final / MANIFEST_FILE, MAX_MANIFEST_BYTES) != manifest_bytes:
                    atomic_write(final / MANIFEST_FILE, manifest_bytes)
                    logger.info(
                        "bundle %s…: manifest replaced (version %d)", sha[:12], parsed.version
                    )
                return final
            tmp = Path(tempfile.mkdtemp(dir=self.bundles_dir, prefix=f"{TMP_PREFIX}{sha[:12]}."))
            try:
                _write_folder(tmp, parsed, manifest_bytes, model)
                if final.exists():  # an incomplete folder under the final name: set it aside
                    logger.warning("replacing the incomplete bundle folder %s", final)
                    remove_tree(final)
                os.replace(tmp, final)
                fsync_dir(self.bundles_dir)
            except BaseException:
                remove_tree(tmp)
                raise
        logger.info("installed bundle %s… (%s v%d)", sha[:12], parsed.name, parsed.version)
        return final

    # ---- pointers -------------------------------------------------------------------------

    @people_errors("activating a bundle")
    def activate(self, sha: str) -> None:
        """Serve sha: previous := the current active, active := sha; the start count begins anew.

        Activating the active bundle changes nothing. A rejected sha is not refused here: the
        caller decides (a `pin` command may ask for it on purpose).
        """
        with self._lock:
            self._require(sha)
            current = self._active_sha()
            if current == sha:
                return
            remove_file(
                self.state_dir / "starts.json"
            )  # first: a new active never inherits a count
            if current is not None:
                self._point("previous", current)
            self._point("active", sha)
        logger.info(
            "activated bundle %s… (previous: %s)",
            sha[:12],
            current[:12] + "…" if current else "none",
        )

    @people_errors("marking a bundle good")
    def mark_good(self, sha: str) -> None:
        """sha passed probation: it is the bundle to fall back to, and never counts as crash-looping."""
        with self._lock:
            self._require(sha)
            self._point("good", sha)
        logger.info("bundle %s… is now the good one", sha[:12])

    @people_errors("rolling back")
    def rollback(self) -> str:
        """Serve the previous bundle (or the good one); returns its sha. StoreError if there is none.

        Afterwards previous is the bundle rolled back from, unless it is rejected (call `reject`
        first when probation failed): then previous is the good bundle, or nothing.
        """
        with self._lock:
            target = self._switch_away(("previous", "good"))
        if target is None:
            raise StoreError("nothing to roll back to: no previous or good bundle in the store")
        return target

    @people_errors("counting a start")
    def note_start(self) -> str | None:
        """Count an agent start against the active bundle; call once per start, before serving.

        A good bundle is not counted. When an active bundle reaches `crash_limit` starts without
        `mark_good`, it is rejected and active becomes the good bundle (or previous); the reason
        is returned. With nothing to fall back to, the active pointer is removed (`active()` is
        then None and the agent starts from its configured bundle). None when nothing changed.
        """
        with self._lock:
            raw_active = self.sha("active")
            current = self._active_sha()
            if current is None:
                return None
            if raw_active != current:  # repair a broken active pointer with its fallback
                self._point("active", current)
            if current == self.sha("good"):
                remove_file(self.state_dir / "starts.json")
                return None
            starts = self._starts(current) + 1
            atomic_write(
                self.state_dir / "starts.json",
                json.dumps({"sha256": current, "starts": starts}).encode(),
            )
            if starts < self.crash_limit:
                return None
            reason = f"crash loop: {starts} starts without passing probation"
            self.rejections.add(current, self._version(current), reason)
            target = self._switch_away(("good", "previous"))
            if target is None:
                remove_file(self.state_dir / "starts.json")
                remove_file(self.state_dir / "active")
        logger.error(
            "bundle %s…: %s; now serving %s",
            current[:12],
            reason,
            target[:12] + "…" if target else "the configured bundle",
        )
        return reason

    def _switch_away(self, order: tuple[Pointer, ...]) -> str | None:
        """active := the first usable of order; previous := old active, old previous or good."""
        current = self._active_sha()
        candidates = [self.sha(p) for p in order]
        target = next(
            (s for s in candidates if s and s != current and not self.rejections.holds(s)), None
        )
        if target is None:
            return None
        remove_file(self.state_dir / "starts.json")
        others = [current, self.sha("previous"), self.sha("good")]
        new_previous = next(
            (s for s in others if s and s != target and not self.rejections.holds(s)), None
        )
        if new_previous is None:
            remove_file(self.state_dir / "previous")
        else:
            self._point("previous", new_previous)
        self._point("active", target)
        logger.info(
            "switched from %s to bundle %s…", current[:12] + "…" if current else "none", target[:12]
        )
        return target

    def _point(self, which: Pointer, sha: str) -> None:
        atomic_write(self.state_dir / which, f"{sha}\n".encode())

    def _require(self, sha: str) -> None:
        self.path(sha)  # refuses what is not a sha256
        if not self.is_installed(sha):
            raise StoreError(f"bundle {sha[:12]}… is not installed in {self.bundles_dir}")

    def _starts(self, sha: str) -> int:
        data = read_json(self.state_dir / "starts.json")
        starts = data.get("starts")
        if data.get("sha256") != sha or not isinstance(starts, int) or isinstance(starts, bool):
            return 0
        return max(0, starts)

    def _version(self, sha: str) -> int:
        try:
            return self.manifest(sha).version
        except StoreError:
            return 0

    # ---- pruning --------------------------------------------------------------------------

    @people_errors("pruning the bundle store")
    def prune(self, keep: Iterable[str] = ()) -> list[str]:
        """Remove every bundle but active, previous, good and those in keep; returns the removed shas."""
        with self._lock:
            kept = {self._active_sha(), *(self.sha(p) for p in POINTERS), *keep}
            removed: list[str] = []
            for entry in sorted(self.bundles_dir.iterdir()):
                if entry.name.startswith(TMP_PREFIX) or entry.name in kept:
                    continue
                if not entry.is_dir() or entry.is_symlink():
                    logger.warning("removing the stray %s from the bundle store", entry.name[:80])
                    entry.unlink(missing_ok=True)
                    continue
                remove_tree(entry)
                removed.append(entry.name)
            clean_temp(self.bundles_dir)
        if removed:
            logger.info(
                "pruned %d bundle(s): %s", len(removed), ", ".join(s[:12] + "…" for s in removed)
            )
        return removed


def _manifest_and_bytes(manifest: Manifest | bytes) -> tuple[Manifest, bytes]:
    if isinstance(manifest, Manifest):
        return manifest, manifest.to_json().encode()
    try:
        return parse_manifest(manifest), bytes(manifest)
    except ValueError as exc:
        raise StoreError(f"cannot install: {exc}") from exc


def _write_folder(
    folder: Path, manifest: Manifest, manifest_bytes: bytes, model: Path | bytes | Iterable[bytes]
) -> None:
    """Write model.tflite (checked against the manifest as it is written) and manifest.json."""
    expected = manifest.model
    if isinstance(model, Path) and model.stat().st_size != expected.size:
        raise StoreError(
            f"cannot install: {model} is {model.stat().st_size} bytes, the manifest says {expected.size}"
        )
    with (folder / MODEL_FILE).open("wb") as out:
        digest, size = write_hashed(out, model)
    if (digest, size) != (expected.sha256, expected.size):
        raise StoreError(
            f"cannot install: the model is {size} bytes with sha256 {digest[:12]}…, "
            f"the manifest says {expected.size} bytes with {expected.sha256[:12]}…"
        )
    with (folder / MANIFEST_FILE).open("wb") as out:
        write_hashed(out, manifest_bytes)
    fsync_dir(folder)
