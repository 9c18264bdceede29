"""One model download, staged chunk by chunk on disk so that it survives restarts and outages.

Layout under the state directory:

    staging/<sha256>/<index>     chunk index of the blob, each written whole (temp file, rename)
    staging/<sha256>.tflite      the assembled model, once every chunk is in and it verified

Every chunk is checked (index, length, sha256) before it is written, and re-checked when a
download resumes (`have`), since what is on disk after a crash is not to be trusted. The whole
file's sha256 and size are checked when the chunks are assembled. Limits on the size and chunk
count are applied before anything is created on disk.

Chunks are not fsynced: since every staged chunk is re-hashed when a download resumes, one that a
power cut left empty or torn is simply fetched again, and the assembled model is fsynced before
the store takes it. (An fsync per chunk cost ~8 ms on the development VM; a 30 MB model is 241 chunks.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from agent.atomic import TMP_PREFIX, fsync_dir
from agent.store.files import (
    StoreError,
    clean_temp,
    is_sha256,
    people_errors,
    remove_file,
    remove_tree,
    sha256_of,
)
from agent.updates.protocol import Blob, Limits

logger = logging.getLogger(__name__)

MODEL_SUFFIX = ".tflite"


class Staging:
    """The staged chunks of one blob under <state_dir>/staging/<sha256>/."""

    @people_errors("staging a download")
    def __init__(self, state_dir: Path, blob: Blob, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        _check_blob(blob, limits)
        self.blob = blob
        self.root = Path(state_dir) / "staging"
        self.dir = self.root / blob.sha256
        self.model_path = self.root / f"{blob.sha256}{MODEL_SUFFIX}"
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

    @people_errors("assembling the model")
    def assemble(self) -> Path:
        """Concatenate the chunks into staging/<sha256>.tflite, checking the whole size and sha256.

        On a mismatch the staged chunks are discarded (they matched their hashes, so the release's
        chunk list disagrees with its model) and StoreError says what differed.
        """
        if self._assembled_ok():
            return self.model_path
        missing = self.missing()
        if missing:
            raise StoreError(
                f"cannot assemble {self.blob.sha256[:12]}…: {len(missing)} chunk(s) missing, first {missing[0]}"
            )
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f"{TMP_PREFIX}{self.blob.sha256[:12]}.")
        try:
            with os.fdopen(fd, "wb") as out:
                digest = hashlib.sha256()
                size = 0
                for index in range(self.blob.chunks):
                    data = (self.dir / str(index)).read_bytes()
                    out.write(data)
                    digest.update(data)
                    size += len(data)
                out.flush()
                os.fsync(out.fileno())
            if (digest.hexdigest(), size) != (self.blob.sha256, self.blob.size):
                raise StoreError(
                    f"the assembled model is {size} bytes with sha256 {digest.hexdigest()[:12]}…, "
                    f"the release says {self.blob.size} bytes with {self.blob.sha256[:12]}…"
                )
            os.replace(tmp, self.model_path)
            fsync_dir(self.root)
        except StoreError:
            Path(tmp).unlink(missing_ok=True)
            self.discard()
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.info(
            "assembled %s… (%d bytes, %d chunks)", self.blob.sha256[:12], size, self.blob.chunks
        )
        return self.model_path

    @people_errors("discarding a download")
    def discard(self) -> None:
        """Remove this download's chunks and assembled file."""
        remove_tree(self.dir)
        remove_file(self.model_path)
        self._have = set()

    def _assembled_ok(self) -> bool:
        path = self.model_path
        if not path.is_file() or path.stat().st_size != self.blob.size:
            return False
        if sha256_of(path) == self.blob.sha256:
            return True
        logger.warning("removing %s: it does not hash to its name", path.name)
        remove_file(path)
        return False

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
        sha = entry.name.removesuffix(MODEL_SUFFIX)
        if keep is not None and sha == keep:
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
