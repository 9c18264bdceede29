"""The config's `updates` section: which channel the device follows, where it keeps its store,
and the limits and timings of pulling, activating and probation (docs/protocol.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.config.base import Strict

DEFAULT_STATE_DIR = Path("/var/lib/edgegap")


class UpdatesConfig(Strict):
    channel: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description=(
            "Follow models/<channel>/manifest and pull new models over MQTT; empty: no updates "
            "(the bundle store is then not used either)."
        ),
    )
    group: Literal["stable", "canary"] = Field(
        default="stable",
        description=(
            "Rollout group: a canary device follows models/<channel>/canary/manifest as well as "
            "the channel's stable release, and takes a new version before the stable group does."
        ),
    )
    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR,
        description="The device's bundle store and staged downloads (bundles/, staging/, pointers).",
    )
    profiles: list[str] = Field(
        default_factory=list,
        description="Device profiles this device accepts; empty: the profile of the bundle it serves.",
    )
    window: int = Field(
        default=8, ge=1, le=256, description="Chunk topics subscribed at once while pulling."
    )
    chunk_timeout_s: float = Field(
        default=10.0, gt=0, description="A chunk not here this long after asking is asked again."
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        le=30,
        description="Times a chunk is asked again, each wait doubling, before the update is rejected.",
    )
    max_bundle_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0, description="Largest model file accepted."
    )
    max_chunks: int = Field(default=8192, gt=0, description="Most chunks a model may be cut into.")
    probation_frames: int = Field(
        default=30, ge=1, description="Probation lasts at least this many frames after a swap..."
    )
    probation_s: float = Field(default=10.0, ge=0, description="...and at least this many seconds.")
    latency_factor: float = Field(
        default=3.0,
        gt=0,
        description=(
            "Probation fails when the median invoke time exceeds this times the latency in the "
            "manifest (metrics.latency_ms_p50), or else the profile's latency budget."
        ),
    )
    crash_limit: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Starts of a new bundle without passing probation before the last good one is served.",
    )
    weight_cache: bool = Field(
        default=True,
        description=(
            "Load an update with LiteRT's CompiledModel over an XNNPACK weight cache that a child "
            "process builds (in the bundle's folder, about the model's size), so the load does not "
            "stall the frames being served. Used with LiteRT on the CPU; else, or when it fails, "
            "the model loads as at start-up."
        ),
    )
