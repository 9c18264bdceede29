"""A bundle on disk: a folder holding model.tflite and manifest.json, under fixed names.

Names inside the manifest never become file paths: the two file names below are the only ones read.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.atomic import atomic_write
from agent.bundle.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from agent.bundle.signing import verify_manifest
from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
MAX_MODEL_BYTES = 512 * 1024 * 1024


class BundleError(EdgegapError, ValueError):
    """A bundle that is missing, malformed, tampered with or untrusted. The message is for people."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def model_bytes(self) -> bytes:
        return self.model_path.read_bytes()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST_FILE
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle not found: {bundle_dir} is not a directory")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: no {MANIFEST_FILE}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        return parse_manifest(path.read_bytes())
    except ValueError as exc:
        raise BundleError(f"{path}: {exc}") from exc


def check_model_file(bundle_dir: Path, manifest: Manifest) -> None:
    """The model file must exist, have the recorded size, and hash to the recorded sha256."""
    model = sized_model_file(bundle_dir, manifest)
    check_model_digest(model, sha256_file(model), manifest)


def sized_model_file(bundle_dir: Path, manifest: Manifest) -> Path:
    """The bundle's model file, once it exists and has the recorded size (not yet hashed)."""
    model = bundle_dir / MODEL_FILE
    if not model.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: no {MODEL_FILE}")
    size = model.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise BundleError(f"{model} is {size} bytes, over the {MAX_MODEL_BYTES} byte limit")
    if size != manifest.model.size:
        raise BundleError(
            f"{model} is {size} bytes but the manifest says {manifest.model.size}: tampered or truncated"
        )
    return model


def check_model_digest(model: Path, digest: str, manifest: Manifest) -> None:
    """digest, the model file's sha256, must be the recorded one."""
    if digest != manifest.model.sha256:
        raise BundleError(
            f"{model} sha256 {digest[:16]}… does not match the manifest: tampered or corrupt"
        )


def load_bundle(bundle_dir: Path, trusted_keys: Iterable[Ed25519PublicKey] | None = None) -> Bundle:
    """Read and check a bundle. With trusted keys, an unsigned or mis-signed bundle is refused."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    check_model_file(bundle_dir, manifest)
    keys = list(trusted_keys or [])
    if keys:
        try:
            verify_manifest(manifest, keys)
        except ValueError as exc:
            raise BundleError(f"{bundle_dir}: {exc}") from exc
    return Bundle(bundle_dir, manifest)


def write_bundle(out_dir: Path, model_bytes: bytes, manifest: Manifest) -> Bundle:
    """Write model then manifest, each atomically; the manifest must already describe the model."""
    if (
        hashlib.sha256(model_bytes).hexdigest() != manifest.model.sha256
        or len(model_bytes) != manifest.model.size
    ):
        raise ValueError("manifest.model does not describe model_bytes")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / MODEL_FILE, model_bytes)
    atomic_write(out_dir / MANIFEST_FILE, manifest.to_json().encode())
    return Bundle(out_dir, manifest)
