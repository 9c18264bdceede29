"""A bounded ring of captures on disk: they wait here until the broker has them.

One file per capture, `<sequence>.cap` (the capture's header line, a newline, the JPEG), written
to a temporary name and renamed, so a power cut leaves whole files or none. The ring holds at
most max_files captures and max_bytes bytes; adding one over either bound drops the oldest first
(counted). Files left from an earlier run are sent first. Used by one thread only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

SUFFIX = ".cap"


class DiskRing:
    def __init__(self, directory: Path, max_files: int, max_bytes: int) -> None:
        self.directory = directory
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.dropped = 0
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        self._files: list[tuple[int, Path, int]] = sorted(
            (int(p.stem), p, p.stat().st_size)
            for p in directory.glob(f"*{SUFFIX}")
            if p.stem.isdigit()
        )
        self._bytes = sum(size for _, _, size in self._files)
        self._next = self._files[-1][0] + 1 if self._files else 0
        if self._files:
            logger.info("capture: %d capture(s) from an earlier run wait to be sent", len(self))
        self._trim(0)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def size(self) -> int:
        return self._bytes

    def put(self, data: bytes) -> None:
        """Add one capture, dropping the oldest first while the ring would be over its bounds."""
        if len(data) > self.max_bytes:
            self.dropped += 1
            logger.warning("capture: %d bytes is more than the whole spool holds", len(data))
            return
        self._trim(len(data))
        seq, self._next = self._next, self._next + 1
        path = self.directory / f"{seq:012d}{SUFFIX}"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._files.append((seq, path, len(data)))
        self._bytes += len(data)

    def _trim(self, incoming: int) -> None:
        while self._files and (
            len(self._files) + (1 if incoming else 0) > self.max_files
            or self._bytes + incoming > self.max_bytes
        ):
            self._remove_oldest()
            self.dropped += 1

    def oldest(self) -> bytes | None:
        """The oldest capture's bytes, or None when empty (a file gone missing is skipped)."""
        while self._files:
            path = self._files[0][1]
            try:
                return path.read_bytes()
            except OSError as exc:
                logger.warning("capture: %s unreadable (%s); dropped", path.name, exc)
                self._remove_oldest()
                self.dropped += 1
        return None

    def pop_oldest(self) -> None:
        """The oldest capture is delivered: forget it."""
        if self._files:
            self._remove_oldest()

    def _remove_oldest(self) -> None:
        _, path, size = self._files.pop(0)
        self._bytes -= size
        path.unlink(missing_ok=True)
