"""Ed25519 keys and manifest signatures.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public), so openssl reads them too.
A key is named by its key id: the first 16 hex digits of sha256 over the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.bundle.manifest import Manifest, Signature
from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

PRIVATE_KEY_NAME = "edgegap.key"
PUBLIC_KEY_NAME = "edgegap.pub"
MAX_KEY_FILE_BYTES = 16 * 1024


class SignatureError(EdgegapError, ValueError):
    """A bundle whose signature is missing, malformed, from an untrusted key or does not verify."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_dir: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write edgegap.key (mode 0600) and edgegap.pub into out_dir; refuse to overwrite unless asked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / PRIVATE_KEY_NAME, out_dir / PUBLIC_KEY_NAME
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise FileExistsError(f"{priv_path} or {pub_path} already exists (use --force to replace)")
    key = Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if priv_path.exists():
        priv_path.unlink()
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv_pem)
    os.chmod(priv_path, 0o600)
    pub_path.write_bytes(pub_pem)
    return priv_path, pub_path


def _read_key_file(path: Path) -> bytes:
    if not path.is_file():
        raise SignatureError(f"key file not found: {path}")
    if path.stat().st_size > MAX_KEY_FILE_BYTES:
        raise SignatureError(f"{path} is too large to be a key file")
    return path.read_bytes()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> Manifest:
    """Return a copy of the manifest carrying a signature over its canonical bytes."""
    unsigned = manifest.model_copy(update={"signature": None})
    value = private_key.sign(unsigned.canonical_bytes())
    sig = Signature(key_id=key_id(private_key.public_key()), value=base64.b64encode(value).decode())
    return unsigned.model_copy(update={"signature": sig})


def verify_manifest(manifest: Manifest, trusted: Iterable[Ed25519PublicKey]) -> str:
    """Check the manifest's signature against the trusted keys; return the key id that signed it."""
    sig = manifest.signature
    if sig is None:
        raise SignatureError("bundle is not signed")
    if sig.algorithm != "ed25519":
        raise SignatureError(f"unsupported signature algorithm {sig.algorithm!r}")
    by_id = {key_id(k): k for k in trusted}
    if sig.key_id not in by_id:
        raise SignatureError(f"bundle is signed by key {sig.key_id}, which is not trusted")
    try:
        value = base64.b64decode(sig.value, validate=True)
    except ValueError as exc:
        raise SignatureError("signature is not valid base64") from exc
    if len(value) != 64:
        raise SignatureError("signature has the wrong length")
    try:
        by_id[sig.key_id].verify(value, manifest.canonical_bytes())
    except InvalidSignature as exc:
        raise SignatureError(
            f"signature does not verify against key {sig.key_id}: manifest was altered"
        ) from exc
    return sig.key_id
