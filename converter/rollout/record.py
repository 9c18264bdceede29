"""The rollout record: which version is at which stage, halted or not, and why.

The controller keeps it retained on `models/<channel>/rollout` (schema `edgegap.rollout/1`,
docs/protocol.md), so it outlives the process that wrote it and anyone can read it:
`edgegap rollout status` does, and `edgegap rollout watch` resumes from it.
"""

from __future__ import annotations

import json
import logging
import time
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.bounded_json import parse_object
from agent.updates.protocol import NAME, SHA256, Topics
from converter.broker_client import Connection
from converter.rollout.bounds import Baseline

logger = logging.getLogger(__name__)

ROLLOUT_SCHEMA = "edgegap.rollout/1"
MAX_RECORD_BYTES = 1024 * 1024
MAX_DEVICES = 1000


class RolloutState(str, Enum):
    CANARY = "canary"  # offered to the canary group, being watched
    PROMOTED = "promoted"  # offered to the stable group
    HALTED = "halted"  # stopped at canary; the canaries were rolled back
    SUPERSEDED = "superseded"  # a newer version reached stable first


class DeviceState(str, Enum):
    WAITING = "waiting"  # not serving the version yet, or not through probation
    WATCHING = "watching"  # passed probation; statistics watched for the window
    IN_BOUNDS = "in_bounds"  # passed probation and stayed in bounds for the window
    OFFLINE = "offline"  # counted, but offline now: promotion waits for it
    ROLLED_BACK = "rolled_back"  # the device rolled back or refused the version
    OUT_OF_BOUNDS = "out_of_bounds"  # its statistics left the bounds


class DeviceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: DeviceState = DeviceState.WAITING
    reason: str = ""
    version: int | None = Field(default=None, description="The version it serves.")
    baseline: Baseline | None = None
    passed_at: float | None = Field(default=None, description="Unix time it passed probation.")
    seen: bool = Field(default=False, description="It has served the rollout's version.")


class RolloutRecord(BaseModel):
    """The retained message on models/<channel>/rollout."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["edgegap.rollout/1"] = Field(alias="schema", default="edgegap.rollout/1")
    channel: str = Field(pattern=NAME.pattern)
    name: str
    version: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256.pattern)
    stage: str = Field(description="The last stage it is offered to: canary or stable.")
    state: RolloutState
    reason: str = ""
    previous: int | None = Field(default=None, description="The stable version at the start.")
    started: float
    updated: float
    bounds: dict[str, Any] = Field(default_factory=dict)
    devices: dict[str, DeviceRecord] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        self.updated = round(time.time(), 3)
        return json.dumps(self.model_dump(mode="json", by_alias=True)).encode()

    @property
    def finished(self) -> bool:
        return self.state is not RolloutState.CANARY


def parse_record(raw: bytes) -> RolloutRecord:
    """A rollout record from the network; raises ValueError with the reason."""
    head = parse_object(raw, MAX_RECORD_BYTES, "rollout record")
    if head.get("schema") != ROLLOUT_SCHEMA:
        raise ValueError(f"unknown rollout record schema {head.get('schema')!r}")
    devices = head.get("devices")
    if isinstance(devices, dict) and len(devices) > MAX_DEVICES:
        raise ValueError(f"{len(devices)} devices in a rollout record, over {MAX_DEVICES}")
    try:
        return RolloutRecord.model_validate(head)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise ValueError(f"rollout record does not validate: {where}: {first['msg']}") from exc


def read_record(conn: Connection, topics: Topics, channel: str) -> RolloutRecord | None:
    """The channel's retained rollout record; None when there is none (or it is unreadable)."""
    topic = topics.rollout(channel)
    raw = conn.read_retained(topic).get(topic)
    if raw is None:
        return None
    try:
        return parse_record(raw)
    except ValueError as exc:
        logger.warning("ignored the rollout record on %s: %s", topic, exc)
        return None
