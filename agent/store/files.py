"""Crash-safe file primitives for the store.

Every file the store writes goes through `atomic_write`: a temp file in the same directory,
written, fsynced, renamed over the target, and the directory fsynced. A reader therefore sees
either the old content or the new, never a torn mix. Temp names start with `TMP_PREFIX`, so what
a crash leaves behind is recognised and removed (`clean_temp`) rather than read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

from agent.atomic import TMP_PREFIX, fsync_dir
from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_COPY_BLOCK = 1 << 20
P = ParamSpec("P")
R = TypeVar("R")


class StoreError(EdgegapError):
    """The store refused an operation, or found its files unusable. The message is for people."""


def people_errors(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn an OSError (disk full, read-only, permissions) into a StoreError saying what failed."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                where = f" ({exc.filename})" if exc.filename else ""
                raise StoreError(f"{what} failed: {exc.strerror or exc}{where}") from exc

        return inner

    return wrap


def is_sha256(text: object) -> bool:
    """True for 64 lowercase hex digits: the only strings the store turns into path components."""
    return isinstance(text, str) and SHA256.match(text) is not None


def remove_file(path: Path) -> None:
    """Unlink path if it exists, and persist the removal."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove a directory so that a crash midway never leaves a partial folder under its name.

    The folder is first renamed to a temp name (atomic), then deleted; a crash during the
    deletion leaves a temp leftover that `clean_temp` removes later.
    """
    if not path.exists():
        return
    if path.name.startswith(TMP_PREFIX):  # already a temp name: nobody reads it
        shutil.rmtree(path, ignore_errors=True)
        return
    doomed = path.with_name(f"{TMP_PREFIX}del-{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, doomed)
    try:
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(doomed, ignore_errors=True)


def clean_temp(directory: Path) -> list[str]:
    """Remove the temp leftovers of interrupted writes in directory; returns their names."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if not entry.name.startswith(TMP_PREFIX):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    if removed:
        logger.info("removed %d leftover(s) of interrupted writes in %s", len(removed), directory)
    return removed


def read_small(path: Path, limit: int) -> bytes | None:
    """The content of a regular file of at most limit bytes; None if missing, larger or not a file."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return None
    return data if len(data) <= limit else None


def write_hashed(out: BinaryIO, source: Path | bytes | Iterable[bytes]) -> tuple[str, int]:
    """Copy source (a file, bytes, or blocks of bytes in order) into out, fsync it; returns
    (sha256 hex, size) of what was written."""
    digest = hashlib.sha256()
    size = 0
    for block in _blocks(source):
        out.write(block)
        digest.update(block)
        size += len(block)
    out.flush()
    os.fsync(out.fileno())
    return digest.hexdigest(), size


def _blocks(source: Path | bytes | Iterable[bytes]) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
    elif isinstance(source, Path):
        with source.open("rb") as src:
            while block := src.read(_COPY_BLOCK):
                yield block
    else:
        yield from source


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


MAX_STATE_FILE = 256 * 1024


def read_json(path: Path) -> dict[str, object]:
    """A small JSON object from path; {} if missing, too large or not an object (logged)."""
    raw = read_small(path, MAX_STATE_FILE)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        logger.warning("ignoring %s: not valid JSON", path)
        return {}
    return data if isinstance(data, dict) else {}
