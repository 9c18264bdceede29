"""The agent: wires config -> source -> served model -> pipeline -> outputs, and shuts down cleanly.

Startup order: check the source can be opened at all (a missing file is reported before anything
slow), load the bundle into a ServedModel (verify, open, fold, golden-check), open the outputs,
connect to the broker, and serve until stopped (SIGTERM/SIGINT), the source ends, or max_frames
are done.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.bundle.signing import load_public_key
from agent.capture.capturer import Capturer, CaptureSink
from agent.config import AgentConfig, ConfigError
from agent.failure import FailureWatch, check_run
from agent.metrics import AgentMetrics, RollingStats
from agent.mqtt import MqttLink
from agent.outputs.preview import PreviewServer
from agent.outputs.sinks import (
    AnnotatedFramesSink,
    JsonlSink,
    MqttSink,
    Outputs,
    PreviewSink,
    PublishPolicy,
)
from agent.pipeline import Pipeline
from agent.served import GoldenCheckFailed, ServedModel, load_served_model
from agent.sources.grabber import Grabber
from agent.sources.readers import make_source
from agent.status import RunSummary, run_summary, status_message
from agent.store import BundleStore, StoreError
from agent.updates.protocol import EventKind, event
from agent.updates.startup import open_store, serve_from_store
from agent.updates.updater import Updater

logger = logging.getLogger(__name__)

# At startup, wait this long for the broker so the first frames are not dropped.
CONNECT_WAIT_S = 3.0

__all__ = ["Agent", "GoldenCheckFailed", "RunSummary", "run_agent"]


class Agent:
    """One device daemon. start() loads everything (raising errors meant for people), run() serves."""

    def __init__(self, config: AgentConfig) -> None:
        config.require_runnable()
        self.config = config
        self.stop_event = threading.Event()
        self.metrics = AgentMetrics()
        self.rolling = RollingStats()
        self.served: ServedModel | None = None
        self.keys: list[Ed25519PublicKey] = []
        self.grabber: Grabber | None = None
        self.pipeline: Pipeline | None = None
        self.outputs: Outputs | None = None
        self.mqtt: MqttLink | None = None
        self.preview: PreviewServer | None = None
        self.store: BundleStore | None = None  # with updates.channel: the device's bundle store
        self.updater: Updater | None = None
        self.capture: Capturer | None = None  # with a broker: capture and the drift signal
        self._on_probation = False  # the model served at start has not passed probation
        self.health = "starting"
        self._status_thread: threading.Thread | None = None
        self._last_status = 0.0
        self._closed = False
        self.watch: FailureWatch | None = None

    # ---- startup ------------------------------------------------------------------------
    def load_model(self) -> ServedModel:
        """Load the bundle to serve as a ServedModel (the pipeline serves it once started): the
        store's active one when the device follows a channel, else the configured one."""
        cfg = self.config
        keys = self.keys = [load_public_key(p) for p in cfg.bundle.trusted_keys]
        if not keys:
            logger.warning(
                "no trusted keys (bundle.trusted_keys / --trusted-key): the bundle's signature "
                "is not checked"
            )
        if cfg.updates.channel:
            self.store = open_store(cfg)
            served, self._on_probation = serve_from_store(
                self.store, cfg, lambda path: load_served_model(path, cfg, keys)
            )
        else:
            assert cfg.bundle.path is not None
            served = load_served_model(cfg.bundle.path, cfg, keys)
        m = served.manifest
        self.metrics.set_model(
            m.name, m.version, m.model.sha256, served.model.backend, served.model.backend_version
        )
        self.served = served
        return served

    def start(self) -> None:
        """Load and check the bundle, open source and outputs, connect. Raises EdgegapError subclasses."""
        cfg = self.config
        source = make_source(cfg.source)
        served = self.load_model()
        m = served.manifest
        self.grabber = Grabber(
            source,
            cfg.source.rate,
            cfg.source.fps,
            cfg.source.loop,
            cfg.source.reconnect,
            prepare=served.preprocess if self._prepare_on_grab(served.threads) else None,
        )
        self.outputs = self._open_outputs(f"{cfg.device_id}: {m.name} v{m.version}")
        self.pipeline = Pipeline(
            served,
            self.grabber,
            self.outputs,
            self.metrics,
            self.rolling,
            cfg.pipeline.overlap_post,
        )
        self.watch = FailureWatch(
            cfg.pipeline.failed_after_frames, cfg.pipeline.exit_after_failed_s, self._on_failed
        )
        self.pipeline.watch = self.watch
        if self.mqtt is not None:
            self.updater = Updater(cfg, self.pipeline, self.mqtt, self.store, self.keys)
            self.updater.capture = self.capture
        if cfg.metrics.enabled:
            with _opening("metrics.port"):
                self.metrics.serve(cfg.metrics.bind, cfg.metrics.port)
        if self.preview is not None:
            self.preview.start()
        if self.mqtt is not None:
            self.mqtt.start()
            if not self.mqtt.wait_connected(CONNECT_WAIT_S):
                logger.warning(
                    "mqtt: broker not reachable yet; serving anyway, publishing once it is"
                )
        if self.updater is not None:
            self.updater.start(probation=self._on_probation)
        if self.capture is not None:
            self.capture.start()
        self.grabber.start()
        self._status_thread = threading.Thread(
            target=self._status_loop, name="edgegap-status", daemon=True
        )
        self._status_thread.start()

    def _open_outputs(self, title: str) -> Outputs:
        """Every configured output; one that cannot be opened is a config error."""
        cfg = self.config
        outputs = Outputs([], cfg.device_id, cfg.fleet)
        self.outputs = outputs  # set first, so close() releases whatever did open
        sinks = outputs.sinks
        if cfg.outputs.jsonl is not None:
            with _opening("outputs.jsonl"):
                sinks.append(JsonlSink(cfg.outputs.jsonl))
        if cfg.outputs.annotated_dir is not None:
            with _opening("outputs.annotated_dir"):
                sinks.append(
                    AnnotatedFramesSink(cfg.outputs.annotated_dir, cfg.outputs.annotated_every)
                )
        if cfg.mqtt.broker:
            self.mqtt = MqttLink(cfg.mqtt, cfg.device_id, cfg.fleet, self.status, self.on_command)
            sinks.append(MqttSink(self.mqtt, PublishPolicy(cfg.publish)))
            spool = cfg.capture.spool_dir or cfg.updates.state_dir / "captures"
            with _opening("capture.spool_dir"):
                self.capture = Capturer(cfg.capture, cfg.device_id, self.mqtt, spool)
            sinks.append(CaptureSink(self.capture))
        else:
            logger.info("no broker configured: local outputs only")
        if cfg.preview.enabled:
            p = cfg.preview
            with _opening("preview.port"):
                self.preview = PreviewServer(p.bind, p.port, p.max_fps, p.jpeg_quality, title)
            sinks.append(PreviewSink(self.preview))
        return outputs

    def _prepare_on_grab(self, threads: int) -> bool:
        """Preparing on the grabber thread pays off only with a core to spare for it."""
        if self.config.pipeline.prepare_on_grab is not None:
            return self.config.pipeline.prepare_on_grab
        spare = (os.cpu_count() or 1) > threads
        logger.info("model input prepared on the %s thread", "grabber" if spare else "inference")
        return spare

    # ---- serving ------------------------------------------------------------------------
    def run(self, max_frames: int | None = None) -> RunSummary:
        """Serve until stopped, the source ends, or max_frames; then shut down. Returns the summary."""
        assert self.pipeline is not None
        limit = self.config.pipeline.max_frames if max_frames is None else max_frames
        stopped_by = "end of source"
        try:
            n = self.pipeline.run(self.stop_event, limit)
            if self.stop_event.is_set():
                stopped_by = "signal"
            elif limit and n >= limit:
                stopped_by = "max_frames"
        finally:
            self.close()
        stats = self.pipeline.stats
        check_run(stats.frames, stats.failed, self.watch.reason if self.watch else "")
        return self.summary(stopped_by)

    def _on_failed(self, reason: str) -> None:
        """Health turns failed (post thread): say so in an event and in the status at once."""
        self.health = "failed"
        if self.mqtt is None or self.pipeline is None:
            return
        m = self.pipeline.served.manifest
        self.mqtt.publish_event(
            event(
                EventKind.FAILED,
                self.config.device_id,
                time.time(),
                m.version,
                m.model.sha256,
                reason=reason,
            )
        )
        self.mqtt.publish_status()

    def summary(self, stopped_by: str = "") -> RunSummary:
        assert self.pipeline is not None and self.grabber is not None
        published = (self.mqtt.published, self.mqtt.dropped) if self.mqtt else (0, 0)
        summary = run_summary(
            self.pipeline.served, self.pipeline.stats, self.grabber, published, stopped_by
        )
        if self.capture is not None and self.capture.enabled:
            summary.extra["captures"] = self.capture.status()["captures"]
        return summary

    def request_stop(self) -> None:
        self.stop_event.set()

    def on_command(self, raw: bytes) -> None:
        """A message on devices/<id>/cmd (paho's thread): queued for the updater thread."""
        if self.updater is not None:
            self.updater.on_command(raw)

    def status(self) -> dict[str, Any]:
        """The retained status message (state online)."""
        self._refresh_health()
        p = self.pipeline
        out = status_message(
            self.config.device_id,
            self.config.fleet,
            self.health,
            p.served if p is not None else self.served,
            self.grabber,
            p.stats if p is not None else None,
            self.rolling,
            self.config.updates.channel,
            self.config.updates.group,
            self._good_sha(),
        )
        if self.capture is not None:
            out.update(self.capture.status())
        return out

    def _good_sha(self) -> str | None:
        """The store's good model (it passed probation), or "" when there is none yet."""
        if self.store is None:
            return None
        try:
            return self.store.sha("good") or ""
        except StoreError:
            return ""

    def _status_loop(self) -> None:
        interval = self.config.mqtt.status_interval_s
        while not self.stop_event.wait(min(interval, 1.0)):
            self._refresh_health()
            m = self.metrics
            m.fps.set(self.rolling.fps())
            if self.grabber is not None:
                m.reconnects.set(self.grabber.stats.reconnects)
                m.dropped.set(self.grabber.stats.dropped)
            if self.capture is not None:
                m.set_capture(self.capture.status())
            if self.mqtt is not None:
                m.mqtt_connected.set(1 if self.mqtt.connected else 0)
                m.published.set(self.mqtt.published)
                m.publish_dropped.set(self.mqtt.dropped)
                if time.monotonic() - self._last_status >= interval:
                    self._last_status = time.monotonic()
                    self.mqtt.publish_status()

    def _refresh_health(self) -> None:
        """degraded while the source is lost or frames fail; ok once frames flow again."""
        if self._closed:
            return
        lost = self.grabber is not None and self.grabber.stats.lost_since is not None
        stats = self.pipeline.stats if self.pipeline is not None else None
        if self.watch is not None and self.watch.failed:
            self.health = "failed"
        elif lost or (stats is not None and stats.failing):
            self.health = "degraded"
        elif stats is not None and stats.frames:
            self.health = "ok"

    # ---- shutdown -----------------------------------------------------------------------
    def close(self, reason: str = "shutdown") -> None:
        """Stop the source, flush outputs, publish the retained offline status, stop servers."""
        if self._closed:
            return
        self._closed = True
        self.stop_event.set()
        self.health = "stopped"
        if self.grabber is not None:
            self.grabber.stop()
        if self._status_thread is not None:
            self._status_thread.join(timeout=2)
        if self.updater is not None:
            self.updater.stop()
        if self.capture is not None:
            self.capture.stop()
        if self.outputs is not None:
            self.outputs.close()
        if self.mqtt is not None:
            final = self.status()
            final.update({"state": "offline", "reason": reason})
            self.mqtt.stop(final)
        if self.preview is not None:
            self.preview.close()
        self.metrics.close()
        if self.pipeline is not None:
            logger.info("agent stopped (%s)", reason)


@contextmanager
def _opening(key: str) -> Iterator[None]:
    """An output that cannot be opened (port in use, unwritable path) is a config error."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = f" {exc.filename}" if exc.filename else ""
        raise ConfigError([f"{key}: cannot open{where}: {reason}"]) from exc


@contextmanager
def stop_on_signals(agent: Agent) -> Iterator[None]:
    """SIGTERM and SIGINT ask the agent to stop cleanly (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("%s received; stopping", signal.Signals(signum).name)
        agent.request_stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_agent(config: AgentConfig) -> RunSummary:
    """Start and serve until done, with signal handling; always shuts down cleanly."""
    agent = Agent(config)
    with stop_on_signals(agent):
        try:
            agent.start()
        except BaseException:
            agent.close(reason="startup failed")
            raise
        return agent.run()
