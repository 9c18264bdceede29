"""One model download, staged chunk by chunk on disk so that it survives restarts and outages.

Layout under the state directory:

    staging/<sha256>/<index>     chunk index of the blob, each written whole (temp file, rename)

Every chunk is checked (index, length, sha256) before it is written, and re-checked when a
download resumes (`have`), since what is on disk after a crash is not to be trusted. Limits on the
size and chunk count are applied before anything is created on disk. Once every chunk is in,
`chunks()` streams them, in order, into the store (`BundleStore.install`), which writes the model
once, checks its whole size and sha256 as it writes, and fsyncs it: the model is never copied
twice on the device's disk (an SD card, often).

Chunks are not fsynced: since every staged chunk is re-hashed when a download resumes, one that a
power cut left empty or torn is simply fetched again. (An fsync per chunk cost ~8 ms on the
development VM; a 30 MB model is 241 chunks.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agent.atomic import TMP_PREFIX
from agent.store.files import (
    StoreError,
    clean_temp,
    is_sha256,
    people_errors,
    remove_file,
    remove_tree,
)
from agent.updates.protocol import Blob, Limits

logger = logging.getLogger(__name__)


class Staging:
    """The staged chunks of one blob under <state_dir>/staging/<sha256>/."""

    @people_errors("staging a download")
    def __init__(self, state_dir: Path, blob: Blob, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        _check_blob(blob, limits)
        self.blob = blob
        self.root = Path(state_dir) / "staging"
        self.dir = self.root / blob.sha256
        self._have: set[int] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)

    @people_errors("checking the staged chunks")
    def have(self) -> set[int]:
        """The chunks on disk that verify; re-reads and re-hashes each, deleting those that do not."""
        clean_temp(self.dir)
        good: set[int] = set()
        for entry in self.dir.iterdir():
            index = _index(entry.name, self.blob.chunks)
            if index is None or not entry.is_file() or entry.is_symlink():
                logger.warning(
                    "removing %s from staging: not a chunk of this model", entry.name[:80]
                )
                _remove(entry)
                continue
            problem = self._check(index, entry)
            if problem is not None:
                logger.warning(
                    "dropping staged chunk %d of %s…: %s", index, self.blob.sha256[:12], problem
                )
                remove_file(entry)
                continue
            good.add(index)
        self._have = good
        return set(good)

    @people_errors("staging a chunk")
    def put(self, index: int, data: bytes) -> None:
        """Stage chunk index; its index, length and sha256 are checked before anything is written."""
        problem = self._problem(index, data)
        if problem is not None:
            raise StoreError(f"chunk {index} of {self.blob.sha256[:12]}… refused: {problem}")
        _write_chunk(self.dir / str(index), data)
        if self._have is not None:
            self._have.add(index)

    def missing(self) -> list[int]:
        """The chunk indices still to fetch, in order (the first call checks what is on disk)."""
        have = self.have() if self._have is None else self._have
        return [i for i in range(self.blob.chunks) if i not in have]

    @people_errors("reading the staged chunks")
    def chunks(self) -> Iterator[bytes]:
        """Every chunk's bytes, in order, for the store to install (StoreError if one is missing).

        A chunk is read as it is needed, so only one is in memory at a time; the whole file's size
        and sha256 are for the store to check as it writes them.
        """
        missing = self.missing()
        if missing:
            raise StoreError(
                f"cannot install {self.blob.sha256[:12]}…: {len(missing)} chunk(s) missing, "
                f"first {missing[0]}"
            )
        return ((self.dir / str(i)).read_bytes() for i in range(self.blob.chunks))

    @people_errors("discarding a download")
    def discard(self) -> None:
        """Remove this download's chunks."""
        remove_tree(self.dir)
        self._have = set()

    def _check(self, index: int, path: Path) -> str | None:
        expected = self.blob.chunk_length(index)
        size = path.stat().st_size
        if size != expected:
            return f"{size} bytes on disk, {expected} expected"
        return self._problem(index, path.read_bytes())

    def _problem(self, index: int, data: bytes) -> str | None:
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < self.blob.chunks
        ):
            return f"index out of range 0..{self.blob.chunks - 1}"
        expected = self.blob.chunk_length(index)
        if len(data) != expected:
            return f"{len(data)} bytes, {expected} expected"
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.blob.chunk_sha256[index]:
            return (
                f"sha256 {digest[:12]}… is not the release's {self.blob.chunk_sha256[index][:12]}…"
            )
        return None


@people_errors("cleaning the staging directory")
def clean_staging(state_dir: Path, keep: str | None = None) -> list[str]:
    """Remove every staged download but keep's (a sha256); returns the names removed."""
    root = Path(state_dir) / "staging"
    if not root.is_dir():
        return []
    removed: list[str] = clean_temp(root)
    for entry in sorted(root.iterdir()):
        if keep is not None and entry.name == keep:
            continue
        _remove(entry)
        removed.append(entry.name)
    if removed:
        logger.info("removed %d stale staging entr(ies) in %s", len(removed), root)
    return removed


def _check_blob(blob: Blob, limits: Limits) -> None:
    if not is_sha256(blob.sha256):
        raise StoreError(f"not a sha256: {str(blob.sha256)[:80]!r}")
    if blob.size > limits.max_model_bytes:
        raise StoreError(
            f"model is {blob.size} bytes, over the {limits.max_model_bytes}-byte limit"
        )
    if blob.chunks > limits.max_chunks:
        raise StoreError(f"{blob.chunks} chunks, over the limit of {limits.max_chunks}")
    if blob.size <= 0 or blob.chunk_size <= 0 or blob.chunks != -(-blob.size // blob.chunk_size):
        raise StoreError(
            f"{blob.chunks} chunks of {blob.chunk_size} bytes cannot hold {blob.size} bytes"
        )
    if len(blob.chunk_sha256) != blob.chunks or not all(is_sha256(h) for h in blob.chunk_sha256):
        raise StoreError("the chunk hashes do not match the chunk count, or are not sha256")


def _write_chunk(path: Path, data: bytes) -> None:
    """Write path whole (a temp file renamed over it), without fsync: see the module docstring."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _index(name: str, chunks: int) -> int | None:
    """The chunk index a file name stands for: a plain decimal below chunks, else None."""
    if (
        not name.isascii()
        or not name.isdigit()
        or (len(name) > 1 and name[0] == "0")
        or len(name) > 10
    ):
        return None
    index = int(name)
    return index if index < chunks else None


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        remove_tree(entry)
    else:
        remove_file(entry)
