"""What the agent reports about itself: the retained status message and the run summary."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agent import __version__
from agent.metrics import PipelineStats, RollingStats
from agent.outputs.messages import STATUS_SCHEMA
from agent.served import ServedModel
from agent.sources.grabber import Grabber

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    frames: int
    fps: float
    dropped: int
    median_ms: dict[str, float | None]
    p99_total_ms: float | None
    backend: str
    backend_version: str
    color_swap: str = "none"  # ServedModel.color_swap: "per frame" or "none"
    published: int = 0
    publish_dropped: int = 0
    reconnects: int = 0
    stopped_by: str = "end of source"
    failed: int = 0  # frames whose decoding or publishing raised (skipped)
    extra: dict[str, Any] = field(default_factory=dict)


def run_summary(
    served: ServedModel,
    stats: PipelineStats,
    grabber: Grabber,
    published: tuple[int, int],
    stopped_by: str,
) -> RunSummary:
    """The summary printed when a run ends. published: (messages sent, messages dropped)."""
    s = stats.summary()
    return RunSummary(
        frames=s["frames"],
        fps=s["fps"],
        dropped=grabber.stats.dropped,
        median_ms=s["median_ms"],
        p99_total_ms=s["p99_total_ms"],
        backend=served.model.backend,
        backend_version=served.model.backend_version,
        color_swap=served.color_swap,
        published=published[0],
        publish_dropped=published[1],
        reconnects=grabber.stats.reconnects,
        stopped_by=stopped_by,
        failed=s["failed"],
    )


def status_message(
    device_id: str,
    fleet: str,
    health: str,
    served: ServedModel | None,
    grabber: Grabber | None,
    stats: PipelineStats | None,
    rolling: RollingStats,
    channel: str | None = None,
    group: str | None = None,
    good_sha256: str | None = None,
) -> dict[str, Any]:
    """The retained status message (state online); its schema is docs/schemas/status.json.
    group: the rollout group (with a channel); good_sha256: the store's model that passed
    probation, so `model.good` says whether the model served has."""
    out: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "state": "online",
        "device_id": device_id,
        "fleet": fleet,
        "agent_version": __version__,
        "ts": round(time.time(), 3),
        "health": health,
    }
    if channel is not None:
        out["channel"] = channel
        if group is not None:
            out["group"] = group
    if served is not None:
        out["model"] = served.describe()
        if good_sha256 is not None:
            out["model"]["good"] = good_sha256 == served.manifest.model.sha256
        out["backend"] = {"name": served.model.backend, "version": served.model.backend_version}
    if grabber is not None:
        out["source"] = grabber.source.describe()
        out["dropped"] = grabber.stats.dropped
    if stats is not None:
        out["frames"] = stats.frames
        out["failed"] = stats.failed
    p50, p99 = rolling.percentiles_ms()
    out["fps"] = round(rolling.fps(), 2)
    out["latency_ms"] = {"p50": p50, "p99": p99}
    return out
