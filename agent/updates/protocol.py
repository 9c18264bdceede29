"""The update protocol's messages and topics, shared by `edgegap publish` and the agent.

docs/protocol.md is the user-facing description of the same thing. In short: a model travels as
content-addressed, immutable, retained chunks on `<prefix>/blobs/<sha256>/<index>`; a retained
*release* on `<prefix>/models/<channel>/manifest` names it, carrying the signed bundle manifest
and how the model was chunked; the same release goes out first, not retained, on the channel's
announce topic, so devices online pull while the chunks are being sent. Devices pull: they read
the release, check it, then fetch the chunks a few at a time. Everything read from the network is
bounded before it is parsed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.bounded_json import parse_object
from agent.bundle.manifest import Manifest
from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

RELEASE_SCHEMA = "edgegap.release/1"
EVENT_SCHEMA = "edgegap.event/1"
# AWS IoT Core refuses messages over 128 KiB; a chunk of 124 KiB leaves room for the rest.
DEFAULT_CHUNK_SIZE = 124 * 1024
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 8 * 1024 * 1024
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a channel or device id: one topic level
# Rollout stages, first to last: a version offered to `canary` is promoted to `stable`.
STAGES = ("canary", "stable")
STABLE = "stable"
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ProtocolError(EdgegapError, ValueError):
    """A message that does not follow the protocol; the text is the reason given in events."""


@dataclass(frozen=True)
class Limits:
    """What a device accepts from the network, checked before anything is allocated."""

    max_release_bytes: int = 2 * 1024 * 1024  # the release message itself
    max_model_bytes: int = 256 * 1024 * 1024
    max_chunks: int = 8192


class Topics:
    """Every topic of the protocol under one prefix (default `edgegap/<fleet>`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")

    @classmethod
    def for_fleet(cls, fleet: str, prefix: str | None = None) -> Topics:
        """The topics under prefix if one is given, else under edgegap/<fleet>."""
        return cls(prefix or f"edgegap/{fleet}")

    def release(self, channel: str, stage: str = STABLE) -> str:
        """The stable stage is the channel's own topic (models/<channel>/manifest); any other
        stage has its own level below the channel (models/<channel>/<stage>/manifest)."""
        if stage == STABLE:
            return f"{self.prefix}/models/{channel}/manifest"
        return f"{self.prefix}/models/{channel}/{stage}/manifest"

    def announce(self, channel: str, stage: str = STABLE) -> str:
        """Where the publisher sends a stage's release, not retained, before its chunks, so
        devices online pull while the chunks are still being sent (models/<channel>/announce,
        models/<channel>/<stage>/announce)."""
        return self.release(channel, stage).removesuffix("/manifest") + "/announce"

    def releases(self) -> str:
        return f"{self.prefix}/models/+/manifest"

    def stage_releases(self) -> str:
        """Every stage release but the stable one (models/+/+/manifest)."""
        return f"{self.prefix}/models/+/+/manifest"

    def rollout(self, channel: str) -> str:
        """The retained record of the channel's current rollout (written by the host)."""
        return f"{self.prefix}/models/{channel}/rollout"

    def chunk(self, sha256: str, index: int) -> str:
        return f"{self.prefix}/blobs/{sha256}/{index}"

    def blob_meta(self, sha256: str) -> str:
        """A small retained record of a published blob, so `edgegap gc` can list blobs."""
        return f"{self.prefix}/blobs/{sha256}/meta"

    def blob_metas(self) -> str:
        return f"{self.prefix}/blobs/+/meta"

    def device(self, device_id: str, leaf: str) -> str:
        return f"{self.prefix}/devices/{device_id}/{leaf}"

    def devices(self, leaf: str) -> str:
        return f"{self.prefix}/devices/+/{leaf}"


def followed_stages(group: str) -> tuple[str, ...]:
    """The stages whose releases a device of this rollout group follows: its own stage and every
    later one (a canary device also takes a version published straight to stable)."""
    if group not in STAGES:
        raise ProtocolError(f"unknown rollout group {group!r} (known: {', '.join(STAGES)})")
    return STAGES[STAGES.index(group) :]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Blob(_Strict):
    """How a model file was cut into chunks: chunk i holds bytes [i * chunk_size, ...)."""

    sha256: str = Field(pattern=SHA256.pattern)
    size: int = Field(gt=0)
    chunk_size: int = Field(ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    chunks: int = Field(gt=0)
    chunk_sha256: list[str] = Field(description="sha256 of each chunk, in order.")

    @model_validator(mode="after")
    def _consistent(self) -> Blob:
        if self.chunks != math.ceil(self.size / self.chunk_size):
            raise ValueError(
                f"{self.chunks} chunks of {self.chunk_size} bytes cannot hold {self.size} bytes"
            )
        if len(self.chunk_sha256) != self.chunks:
            raise ValueError(f"{len(self.chunk_sha256)} chunk hashes for {self.chunks} chunks")
        if not all(SHA256.match(h) for h in self.chunk_sha256):
            raise ValueError("a chunk hash is not 64 lowercase hex digits")
        return self

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)


class Release(_Strict):
    """The retained message on models/<channel>/manifest."""

    schema_: Literal["edgegap.release/1"] = Field(alias="schema", default="edgegap.release/1")
    channel: str = Field(pattern=NAME.pattern)
    manifest: Manifest
    blob: Blob
    published: str = Field(default="", description="ISO 8601 UTC time of the publish.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _blob_is_the_model(self) -> Release:
        m = self.manifest.model
        if (self.blob.sha256, self.blob.size) != (m.sha256, m.size):
            raise ValueError("the blob is not the model the manifest names (sha256 or size)")
        return self

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True)).encode()


def parse_release(raw: bytes, limits: Limits) -> Release:
    """The release in raw, checked against limits before and after parsing; raises ProtocolError."""
    try:
        head = parse_object(raw, limits.max_release_bytes, "release")
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    if head.get("schema") != RELEASE_SCHEMA:
        raise ProtocolError(f"unknown release schema {head.get('schema')!r}")
    blob = head.get("blob")
    if isinstance(blob, dict):  # bound the counts before pydantic builds lists from them
        size, chunks = blob.get("size"), blob.get("chunks")
        if isinstance(size, int) and size > limits.max_model_bytes:
            raise ProtocolError(
                f"model is {size} bytes, over the {limits.max_model_bytes}-byte limit"
            )
        if isinstance(chunks, int) and chunks > limits.max_chunks:
            raise ProtocolError(f"{chunks} chunks, over the limit of {limits.max_chunks}")
    try:
        return Release.model_validate(head)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "release"
        raise ProtocolError(f"release does not validate: {where}: {first['msg']}") from exc


def cut(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Blob, list[bytes]]:
    """The model's bytes as chunks, with the Blob that describes them."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ProtocolError(
            f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes, got {chunk_size}"
        )
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    blob = Blob(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=chunk_size,
        chunks=len(chunks),
        chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
    )
    return blob, chunks


class EventKind(str, Enum):
    AVAILABLE = "available"
    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    ACTIVATING = "activating"
    ACTIVATED = "activated"
    PROBATION_PASSED = "probation_passed"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    COMMAND = "command"
    FAILED = "failed"  # the served model's frames keep failing (agent/failure.py)


def event(
    kind: EventKind,
    device_id: str,
    ts: float,
    version: int | None = None,
    sha256: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An event message (devices/<id>/events); extra carries reason, progress and the like."""
    out: dict[str, Any] = {"schema": EVENT_SCHEMA, "event": kind.value, "device_id": device_id}
    out["ts"] = round(ts, 3)
    if version is not None:
        out["version"] = version
    if sha256 is not None:
        out["sha256"] = sha256
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


COMMANDS = ("rollback", "reload", "pin", "unpin", "set_threshold", "status", "capture")
CAPTURE_ACTIONS = ("on", "off", "policy")
MAX_COMMAND_BYTES = 4096


@dataclass(frozen=True)
class Command:
    name: str
    value: float | None = None  # set_threshold
    version: int | None = None  # pin
    action: str | None = None  # capture: on, off or policy
    policy: dict[str, Any] | None = None  # capture policy: the keys to change
    sha256: str | None = None  # rollback: only from this model, which is then rejected


def parse_command(raw: bytes) -> Command:
    """A command from devices/<id>/cmd; raises ProtocolError with the reason it is refused."""
    if len(raw) > MAX_COMMAND_BYTES:
        raise ProtocolError(f"command is {len(raw)} bytes, over {MAX_COMMAND_BYTES}")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"command is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("a command is a JSON object")
    name = obj.get("cmd")
    if name not in COMMANDS:
        raise ProtocolError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
    if name == "set_threshold":
        value = obj.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ProtocolError("set_threshold needs a value between 0 and 1")
        return Command(name, value=float(value))
    if name == "pin":
        version = obj.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ProtocolError("pin needs a version: a non-negative integer")
        return Command(name, version=version)
    if name == "capture":
        return _capture_command(obj)
    if name == "rollback" and "sha256" in obj:
        sha = obj["sha256"]
        if not isinstance(sha, str) or not SHA256.match(sha):
            raise ProtocolError("rollback's sha256 must be 64 lowercase hex digits")
        return Command(name, sha256=sha)
    return Command(name)


def _capture_command(obj: dict[str, Any]) -> Command:
    """{"cmd": "capture", "action": "on" | "off"} or {..., "action": "policy", "policy": {...}};
    the policy's keys are checked when it is applied."""
    action = obj.get("action")
    if action not in CAPTURE_ACTIONS:
        raise ProtocolError(f"capture needs an action: one of {', '.join(CAPTURE_ACTIONS)}")
    policy = obj.get("policy")
    if action == "policy":
        if not isinstance(policy, dict) or not policy:
            raise ProtocolError("capture policy needs a policy: an object of the keys to change")
        return Command("capture", action=action, policy=policy)
    if policy is not None:
        raise ProtocolError(f"capture {action} takes no policy")
    return Command("capture", action=action)


def chunk_indices(blob: Blob, have: set[int]) -> Iterator[int]:
    """The chunk indices still missing, in order."""
    return (i for i in range(blob.chunks) if i not in have)
