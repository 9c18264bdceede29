"""Models the device refused: remembered on disk, so a rejected model is not tried again until a
newer version of it comes. `rejected.json` holds {sha256: {"version", "reason", "ts"}}, newest
entries only."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from agent.atomic import atomic_write
from agent.store.files import StoreError, is_sha256, people_errors, read_json

logger = logging.getLogger(__name__)

MAX_REJECTED = 64  # rejected.json keeps the newest entries only


class Rejections:
    def __init__(self, path: Path, lock: threading.RLock) -> None:
        self.path = path
        self._lock = lock

    @people_errors("recording a rejection")
    def add(self, sha: str, version: int, reason: str) -> None:
        """Remember that sha (at this manifest version) must not be tried again."""
        if not is_sha256(sha):
            raise StoreError(f"not a sha256: {sha[:80]!r}")
        with self._lock:
            entries = self._entries()
            entries.pop(sha, None)
            entries[sha] = {"version": version, "reason": reason[:200], "ts": round(time.time(), 3)}
            while len(entries) > MAX_REJECTED:
                entries.pop(next(iter(entries)))
            atomic_write(self.path, json.dumps(entries, indent=1).encode())
        logger.warning("rejected bundle %s… (version %d): %s", sha[:12], version, reason)

    def holds(self, sha: str, version: int | None = None) -> bool:
        """True if sha was rejected, at this version or a later one (None: at any version).

        A rejection holds until a newer version comes: the same model in a release of a higher
        manifest version than the rejected one is tried again.
        """
        entry = self._entries().get(sha)
        if entry is None:
            return False
        rejected_at = entry.get("version")
        if version is None or not isinstance(rejected_at, int):
            return True
        return version <= rejected_at

    def reason(self, sha: str) -> str | None:
        """Why sha was rejected, or None."""
        entry = self._entries().get(sha)
        return None if entry is None else str(entry.get("reason", ""))

    def _entries(self) -> dict[str, dict[str, object]]:
        data = read_json(self.path)
        return {k: v for k, v in data.items() if is_sha256(k) and isinstance(v, dict)}
