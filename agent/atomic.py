"""Files replaced whole or not at all: a reader sees the old content or the new, never a torn mix.

Used for bundles written by the converter and for the device's store. Temp names start with
TMP_PREFIX, so whoever owns a folder can recognise and remove what a crash left behind.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (a rename or unlink inside it)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace path with data: temp file in the same directory, write, fsync, rename, fsync dir."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
