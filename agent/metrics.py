"""Health numbers: Prometheus /metrics, plus the rolling fps and latency percentiles for status.

Each agent has its own registry (not the process-global one), so several agents or tests can
live in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from agent.outputs.messages import STAGES

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
)


class RollingStats:
    """fps over the last few seconds and latency percentiles over the last N frames."""

    def __init__(self, window_s: float = 5.0, samples: int = 512) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._latency: deque[float] = deque(maxlen=samples)
        self._lock = threading.Lock()

    def add(self, latency_s: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._latency.append(latency_s)
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()

    def fps(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(now - self._times[0], 1e-9)

    def percentiles_ms(self) -> tuple[float | None, float | None]:
        with self._lock:
            if not self._latency:
                return None, None
            arr = np.asarray(self._latency) * 1000.0
        return round(float(np.percentile(arr, 50)), 3), round(float(np.percentile(arr, 99)), 3)


class AgentMetrics:
    """The agent's Prometheus metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames = Counter("edgegap_frames", "Frames processed.", registry=r)
        self.dropped = Gauge(
            "edgegap_dropped_frames", "Frames dropped as stale since start.", registry=r
        )
        self.fps = Gauge(
            "edgegap_fps", "Processed frames per second over the last few seconds.", registry=r
        )
        self.stage = Histogram(
            "edgegap_stage_seconds",
            "Time per frame in each stage (grab, pre, wait, invoke, post, publish) and capture to published (total).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.detections = Counter("edgegap_detections", "Detections reported.", registry=r)
        self.failed = Counter(
            "edgegap_failed_frames",
            "Frames whose decoding or publishing raised; each was skipped.",
            registry=r,
        )
        self.published = Gauge(
            "edgegap_mqtt_published", "Detection messages published.", registry=r
        )
        self.publish_dropped = Gauge(
            "edgegap_mqtt_dropped",
            "Detection messages dropped while the broker was away.",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "edgegap_mqtt_connected", "1 while connected to the broker.", registry=r
        )
        self.reconnects = Gauge(
            "edgegap_source_reconnects",
            "Times the source was reopened after a dropout.",
            registry=r,
        )
        self.model = Info("edgegap_model", "The bundle being served.", registry=r)
        self.model_version = Gauge(
            "edgegap_model_version", "Version of the bundle being served.", registry=r
        )
        self.captures = Gauge(
            "edgegap_captures",
            "Frame captures since start: sent, dropped, waiting (in the spool), capped.",
            ["state"],
            registry=r,
        )
        self.drift = Gauge(
            "edgegap_drift",
            "Rolling statistics of the model serving: top_score_mean, top_score_p10, "
            "detections_per_frame (over capture.drift_window_s).",
            ["stat"],
            registry=r,
        )
        self._children = {s: self.stage.labels(stage=s) for s in (*STAGES, "total")}
        self._server: Any = None
        self.port: int | None = None

    def set_model(
        self, name: str, version: int, sha256: str, backend: str, backend_version: str
    ) -> None:
        self.model.info(
            {
                "name": name,
                "version": str(version),
                "sha256": sha256,
                "backend": backend,
                "backend_version": backend_version,
            }
        )
        self.model_version.set(version)

    def set_capture(self, status: dict[str, Any]) -> None:
        """The `captures` and `drift` of the status message, as gauges."""
        for state in ("sent", "dropped", "waiting", "capped"):
            self.captures.labels(state=state).set(status["captures"][state])
        for stat in ("top_score_mean", "top_score_p10", "detections_per_frame"):
            self.drift.labels(stat=stat).set(status["drift"][stat])

    def observe(self, stage: str, seconds: float) -> None:
        self._children[stage].observe(seconds)

    def serve(self, bind: str, port: int) -> int:
        """Start the /metrics HTTP server; returns the port it listens on."""
        server, _thread = start_http_server(port, addr=bind, registry=self.registry)
        self._server = server
        self.port = int(server.server_address[1])
        logger.info("metrics: http://%s:%d/metrics", bind, self.port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


HISTORY = 20_000  # per-stage samples kept for the run summary


@dataclass
class PipelineStats:
    """Per-stage times of recent frames, and the busy time used for sustained fps."""

    frames: int = 0
    busy_s: float = 0.0  # wall time spent inside run() while frames were flowing
    stages: dict[str, deque[float]] = field(
        default_factory=lambda: {s: deque(maxlen=HISTORY) for s in (*STAGES, "total")}
    )
    failed: int = 0  # frames whose decoding or publishing raised: skipped, serving went on
    failing: int = 0  # ... of them in a row, up to the last frame (0 once one succeeds)

    def median_ms(self, stage: str) -> float | None:
        values = self.stages[stage]
        return round(float(np.median(values)) * 1000.0, 3) if values else None

    def percentile_ms(self, stage: str, q: float) -> float | None:
        values = self.stages[stage]
        return round(float(np.percentile(values, q)) * 1000.0, 3) if values else None

    @property
    def fps(self) -> float:
        return self.frames / self.busy_s if self.busy_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "fps": round(self.fps, 2),
            "median_ms": {s: self.median_ms(s) for s in (*STAGES, "total")},
            "p99_total_ms": self.percentile_ms("total", 99),
            "failed": self.failed,
        }
