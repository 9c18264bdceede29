"""What a device checks in a release before it fetches anything, in docs/protocol.md's order.

The first check that fails ends the update: `Rejected` carries the reason for the `rejected`
event; `Ignored` is a release that is not news (the very model served, or a pinned device) and
gets no event. Nothing here touches the network or the frame path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.bundle.manifest import FORMAT_VERSION, Manifest
from agent.bundle.signing import verify_manifest
from agent.decoders import DECODERS, DecoderError, make_decoder
from agent.errors import EdgegapError
from agent.preprocess import Preprocessor
from agent.updates.protocol import Limits, ProtocolError, Release, parse_release

logger = logging.getLogger(__name__)

IMAGE_DTYPES = ("int8", "uint8", "int16", "float32")


class Rejected(EdgegapError):
    """A release (or a later step of its update) refused; str() is the event's reason."""

    def __init__(self, reason: str, version: int | None = None, sha256: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.version = version
        self.sha256 = sha256


class Ignored(EdgegapError):
    """A release that is not news; logged, no event."""


@dataclass(frozen=True)
class Device:
    """What the checks compare a release with."""

    channel: str
    limits: Limits
    keys: list[Ed25519PublicKey]
    active: Manifest | None  # the manifest of the model served
    profiles: frozenset[str]
    is_rejected: Callable[[str, int], bool]
    pinned: int | None = None
    older_ignored: bool = False  # following several stages: an older release is not news


def check_release(raw: bytes, device: Device) -> Release:
    """The release in raw if it passes checks 1 to 5; raises Rejected or Ignored."""
    try:
        release = parse_release(raw, device.limits)  # 1. size, JSON, schema, limits
    except ProtocolError as exc:
        raise Rejected(str(exc)) from exc
    m = release.manifest
    version, sha = m.version, m.model.sha256
    if release.channel != device.channel:
        raise Rejected(f"release is for channel {release.channel!r}", version, sha)
    _check_signature(m, device.keys, version, sha)  # 2.
    active = device.active  # 3.
    if active is not None and sha == active.model.sha256:
        raise Ignored(f"release v{version} is the model served")
    if device.pinned is not None:
        raise Ignored(f"pinned to version {device.pinned}; release v{version} ignored")
    if active is not None and version <= active.version:
        if device.older_ignored:
            raise Ignored(f"release v{version} is not above the active v{active.version}")
        raise Rejected(
            f"version {version} is not above the active version {active.version}", version, sha
        )
    if device.is_rejected(sha, version):
        raise Rejected(f"model {sha[:12]}… was rejected before", version, sha)
    if m.profile not in device.profiles:  # 4.
        accepted = ", ".join(sorted(device.profiles)) or "none"
        raise Rejected(f"profile {m.profile!r} is not accepted here ({accepted})", version, sha)
    if m.format != FORMAT_VERSION:
        raise Rejected(f"bundle format {m.format} is not {FORMAT_VERSION}", version, sha)
    problem = input_problem(m) or decoder_problem(m)  # 5.
    if problem is not None:
        raise Rejected(problem, version, sha)
    return release


def _check_signature(m: Manifest, keys: list[Ed25519PublicKey], version: int, sha: str) -> None:
    if not keys:
        logger.warning("no trusted keys: release v%d is taken unsigned", version)
        return
    try:
        verify_manifest(m, keys)
    except ValueError as exc:
        raise Rejected(f"signature: {exc}", version, sha) from exc


def input_problem(m: Manifest) -> str | None:
    """Why a camera or video source cannot feed this model's input, or None."""
    spec = m.input
    shape = spec.shape
    if len(shape) != 4 or shape[0] != 1 or shape[3] not in (1, 3) or min(shape[1:3]) < 1:
        return f"input shape {shape} is not an image [1, H, W, 1 or 3]"
    if spec.dtype not in IMAGE_DTYPES:
        return f"input dtype {spec.dtype} cannot be fed ({', '.join(IMAGE_DTYPES)})"
    try:
        Preprocessor(spec)
    except (ValueError, TypeError) as exc:
        return f"input cannot be fed: {exc}"
    return None


def decoder_problem(m: Manifest) -> str | None:
    if m.decoder not in DECODERS:
        served = ", ".join(d.value for d in DECODERS)
        return f"decoder {m.decoder.value!r} is not served here ({served})"
    try:
        make_decoder(m)  # its outputs fit its parameters: the load-time check, before any fetch
    except DecoderError as exc:
        return str(exc)
    return None
