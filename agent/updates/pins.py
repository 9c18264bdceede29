"""A `pin` command's version, kept in <state_dir>/pin so that it outlives a restart."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.store import atomic_write
from agent.store.files import read_small, remove_file

logger = logging.getLogger(__name__)


class Pin:
    """The pinned version, or None (follow the channel). Without a state dir, in memory only."""

    def __init__(self, state_dir: Path | None) -> None:
        self._path = None if state_dir is None else Path(state_dir) / "pin"
        self.version: int | None = None
        raw = None if self._path is None else read_small(self._path, 32)
        text = (raw or b"").decode("ascii", errors="replace").strip()
        if text.isdigit():
            self.version = int(text)
            logger.info("pinned to version %d (%s)", self.version, self._path)
        elif text:
            logger.warning("ignoring %s: not a version (%r)", self._path, text[:32])

    def set(self, version: int | None) -> None:
        self.version = version
        if self._path is None:
            return
        if version is None:
            remove_file(self._path)
        else:
            atomic_write(self._path, f"{version}\n".encode())
