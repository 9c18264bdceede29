"""The agent: wires config -> bundle -> interpreter -> pipeline -> outputs, and shuts down cleanly.

Startup order: load and verify the bundle, open the interpreter, check the model matches its
manifest, run the golden check, then open the source and outputs, connect to the broker, and
serve until stopped (SIGTERM/SIGINT), the source ends, or max_frames are done.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np

from agent import __version__
from agent.affinity import Pinning, new_native_threads, pin_workers, unpinned
from agent.bgr_fold import FoldedModel, FoldRefused, bgr_input, fold_bgr
from agent.bundle import Bundle, BundleError, load_bundle
from agent.config import AgentConfig, ConfigError, GoldenPolicy
from agent.decoders import OutputDecoder, make_decoder
from agent.golden import check_golden
from agent.grabber import Grabber
from agent.manifest import ColorOrder, InputSpec, Manifest
from agent.messages import (
    DETECTIONS_SCHEMA,
    STATUS_SCHEMA,
    DetectionsEncoder,
    FrameResult,
)
from agent.metrics import AgentMetrics, RollingStats
from agent.mqtt import MqttLink
from agent.outputs import (
    AnnotatedFramesSink,
    JsonlSink,
    MqttSink,
    Outputs,
    PreviewSink,
    PublishPolicy,
)
from agent.pipeline import Pipeline
from agent.preprocess import Preprocessor
from agent.preview import PreviewServer
from agent.runtime import LoadedModel, open_model
from agent.runtime.amx import amx_label, amx_state
from agent.runtime.timing import apply_amx_policy
from agent.signing import load_public_key
from agent.sources import make_source

logger = logging.getLogger(__name__)

# At startup, wait this long for the broker so the first frames are not dropped.
CONNECT_WAIT_S = 3.0

__all__ = [
    "DETECTIONS_SCHEMA",
    "STATUS_SCHEMA",
    "Agent",
    "GoldenCheckFailed",
    "RunSummary",
    "run_agent",
]


class GoldenCheckFailed(BundleError):
    """The bundle's model does not reproduce its golden outputs on this device's runtime."""


@dataclass
class RunSummary:
    frames: int
    fps: float
    dropped: int
    median_ms: dict[str, float | None]
    p99_total_ms: float | None
    backend: str
    backend_version: str
    amx: str = ""  # amx_label(): "AMX in use", "AMX withheld", "no AMX", ...
    color_swap: str = "none"  # Agent.color_swap: "folded", "per frame" or "none"
    published: int = 0
    publish_dropped: int = 0
    reconnects: int = 0
    stopped_by: str = "end of source"
    prewarms: int = 0  # pipeline.prewarm_ms passes run, off the frame path
    prewarm_ms: float | None = None  # their median duration
    failed: int = 0  # frames whose decoding or publishing raised (skipped)
    extra: dict[str, Any] = field(default_factory=dict)


def _opened_and_invoked(content: bytes, threads: int, config: AgentConfig) -> LoadedModel:
    """The model, opened and invoked once on zeros: interpreters start their workers lazily."""
    model = open_model(content, threads=threads, backend=config.runtime.backend)
    spec = model.inputs[0]
    model.set_input(np.zeros(spec.shape, dtype=spec.dtype))
    model.invoke()
    return model


def resolve_threads(config: AgentConfig, manifest: Manifest, cpus: int | None = None) -> int:
    """Threads from the config, else from the bundle's device profile (at most one per CPU of this
    machine: more would only take turns), else 1."""
    if config.runtime.threads:
        return config.runtime.threads
    try:
        from firmware_profiles import ProfileError, load_profile

        wanted = load_profile(manifest.profile).runtime.threads
    except (ProfileError, ImportError) as exc:
        logger.info("profile %s not found here (%s); using 1 thread", manifest.profile, exc)
        return 1
    cpus = cpus or os.cpu_count() or wanted
    if wanted > cpus:
        logger.info("profile %s asks for %d threads; this machine has %d CPUs", manifest.profile, wanted, cpus)
    return min(wanted, cpus)


def check_model_io(model: LoadedModel, manifest: Manifest) -> None:
    """The interpreter's tensors must be the ones the manifest describes, by index."""
    inp = model.inputs[0]
    if list(inp.shape) != manifest.input.shape or inp.dtype.name != manifest.input.dtype:
        raise BundleError(
            f"model input is {list(inp.shape)} {inp.dtype.name} but the manifest says "
            f"{manifest.input.shape} {manifest.input.dtype}"
        )
    by_index = {o.index: o for o in model.outputs}
    for spec in manifest.outputs:
        got = by_index.get(spec.index)
        if got is None:
            raise BundleError(
                f"manifest output {spec.name!r} (index {spec.index}) is not an output of the model"
            )
        if got.dtype.name != spec.dtype or (
            list(got.shape) != spec.shape and all(d > 0 for d in got.shape)
        ):
            raise BundleError(
                f"output {spec.name!r} is {list(got.shape)} {got.dtype.name}, manifest says {spec.shape} {spec.dtype}"
            )


class Agent:
    """One device daemon. start() loads everything (raising errors meant for people), run() serves."""

    def __init__(self, config: AgentConfig) -> None:
        config.require_runnable()
        self.config = config
        self.stop_event = threading.Event()
        self.metrics = AgentMetrics()
        self.rolling = RollingStats()
        self.bundle: Bundle | None = None
        self.model: LoadedModel | None = None
        self.decoder: OutputDecoder | None = None
        self.grabber: Grabber | None = None
        self.pipeline: Pipeline | None = None
        self.outputs: Outputs | None = None
        self.mqtt: MqttLink | None = None
        self.preview: PreviewServer | None = None
        self.health = "starting"
        self.started = time.time()
        self._status_thread: threading.Thread | None = None
        self._last_status = 0.0
        self.threads = 1
        self.pinning: Pinning | None = None
        self._closed = False
        self._detections_json: DetectionsEncoder | None = None
        self.input_spec: InputSpec | None = None  # the manifest's, or BGR when the swap is folded
        self.color_swap = "none"  # for an RGB model: "folded" into it at load, or "per frame"

    # ---- startup ------------------------------------------------------------------------
    def load_model(self) -> None:
        cfg = self.config
        assert cfg.bundle.path is not None
        keys = [load_public_key(p) for p in cfg.bundle.trusted_keys]
        bundle = load_bundle(cfg.bundle.path, keys)
        m = bundle.manifest
        threads = self.threads = resolve_threads(cfg, m)
        content = bundle.model_bytes()
        apply_amx_policy(cfg.runtime.amx, content, threads, cfg.runtime.backend)
        folded = self._folded(content, m)
        model = self._open(folded.content if folded else content, threads)
        logger.info(
            "bundle %s v%d (%s, %s) on %s %s with %d thread(s), %s%s",
            m.name,
            m.version,
            m.profile,
            m.decoder.value,
            model.backend,
            model.backend_version,
            threads,
            amx_label(),
            ", signature verified" if keys else "",
        )
        check_model_io(model, m)
        try:
            self._check_golden(bundle, model, reverse_channels=folded is not None)
        except GoldenCheckFailed as exc:
            if folded is None:
                raise
            model = self._open(content, threads)
            self._check_golden(bundle, model, reverse_channels=False)
            logger.warning(
                "with the color swap folded in, the model failed its golden check (%s); serving "
                "it as shipped and swapping every frame",
                exc,
            )
            folded = None
        if m.input.color_order is ColorOrder.RGB:
            self.color_swap = "folded" if folded else "per frame"
        self.input_spec = bgr_input(m.input) if folded else m.input
        det = cfg.detection
        self.decoder = make_decoder(m, det.score_threshold, det.max_detections, det.top_k)
        self.bundle, self.model = bundle, model
        self.metrics.set_model(
            m.name, m.version, m.model.sha256, model.backend, model.backend_version
        )

    def _folded(self, content: bytes, m: Manifest) -> FoldedModel | None:
        """The model with the BGR->RGB swap folded in, when it takes RGB and the fold is exact."""
        if m.input.color_order is not ColorOrder.RGB:
            return None
        if not self.config.runtime.fold_bgr:
            logger.info("color swap: every frame (runtime.fold_bgr is off)")
            return None
        try:
            folded = fold_bgr(content)
        except FoldRefused as exc:
            logger.info("color swap: every frame, as it cannot be folded into the model: %s", exc)
            return None
        logger.info(
            "color swap: folded into the model's %d first convolution(s); frames go in as BGR",
            folded.convolutions,
        )
        return folded

    def _open(self, content: bytes, threads: int) -> LoadedModel:
        cfg = self.config
        if not cfg.runtime.pin_threads:
            return open_model(content, threads=threads, backend=cfg.runtime.backend)
        model, workers = new_native_threads(lambda: _opened_and_invoked(content, threads, cfg))
        self.pinning = pin_workers(workers)
        return model

    def _check_golden(self, bundle: Bundle, model: LoadedModel, reverse_channels: bool) -> None:
        """Apply bundle.golden; raises GoldenCheckFailed. reverse_channels: the model takes BGR."""
        m = bundle.manifest
        policy = self.config.bundle.golden
        if policy is GoldenPolicy.SKIP:
            return
        if m.golden is None:
            if policy is GoldenPolicy.REQUIRE:
                raise GoldenCheckFailed(
                    f"{bundle.path}: bundle has no golden check and bundle.golden is require"
                )
            logger.warning("bundle has no golden check; serving it unchecked")
            return
        result = check_golden(model, m, reverse_channels)
        if not result.passed:
            raise GoldenCheckFailed(f"{bundle.path}: golden check failed: {result.reason}")
        logger.info(
            "golden check passed (max error %s)", ", ".join(f"{e:.3g}" for e in result.max_error)
        )

    def start(self) -> None:
        """Load and check the bundle, open source and outputs, connect. Raises EdgegapError subclasses."""
        with unpinned():  # threads started here run anywhere, even if this thread served pinned
            self._start()

    def _start(self) -> None:
        cfg = self.config
        self.load_model()
        assert self.bundle is not None and self.model is not None and self.decoder is not None
        assert self.input_spec is not None
        m = self.bundle.manifest
        pre = Preprocessor(self.input_spec, pad_value=int(m.extra.get("pad_value", 0)))
        source = make_source(cfg.source)
        self.grabber = Grabber(
            source,
            cfg.source.rate,
            cfg.source.fps,
            cfg.source.loop,
            cfg.source.reconnect,
            prepare=pre if self._prepare_on_grab() else None,
            inline=cfg.pipeline.inline_reads,
        )
        self.outputs = Outputs([])
        sinks = self.outputs.sinks  # filled as each output opens, so close() releases them all
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
        else:
            logger.info("no broker configured: local outputs only")
        if cfg.preview.enabled:
            with _opening("preview.port"):
                self.preview = PreviewServer(
                    cfg.preview.bind,
                    cfg.preview.port,
                    cfg.preview.max_fps,
                    cfg.preview.jpeg_quality,
                    f"{cfg.device_id}: {m.name} v{m.version}",
                )
            sinks.append(PreviewSink(self.preview))
        self.pipeline = Pipeline(
            self.model,
            m,
            pre,
            self.decoder,
            self.grabber,
            self._publish,
            self.metrics,
            self.rolling,
            cfg.pipeline.overlap_post,
            self.pinning,
            cfg.pipeline.prewarm_ms / 1000.0,
            self._message,
        )
        self._detections_json = DetectionsEncoder(cfg.device_id, cfg.fleet, self.pipeline.model_ref)
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
        self.grabber.start()
        self._status_thread = threading.Thread(
            target=self._status_loop, name="edgegap-status", daemon=True
        )
        self._status_thread.start()

    def _prepare_on_grab(self) -> bool:
        """Preparing on the grabber thread pays off only with a core to spare for it."""
        if self.config.pipeline.prepare_on_grab is not None:
            return self.config.pipeline.prepare_on_grab
        spare = (os.cpu_count() or 1) > self.threads
        logger.info("model input prepared on the %s thread", "grabber" if spare else "inference")
        return spare

    # ---- serving ------------------------------------------------------------------------
    def _message(self, result: FrameResult) -> bytes:
        assert self._detections_json is not None
        return self._detections_json(result, time.time())

    def _publish(self, result: FrameResult) -> None:
        payload = self._message(result)
        assert self.outputs is not None
        self.outputs.write(result, payload)
        if self.health != "ok" and (self.grabber is None or self.grabber.stats.lost_since is None):
            self.health = "ok"

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
        return self.summary(stopped_by)

    def summary(self, stopped_by: str = "") -> RunSummary:
        assert self.pipeline is not None and self.model is not None and self.grabber is not None
        s = self.pipeline.stats.summary()
        return RunSummary(
            frames=s["frames"],
            fps=s["fps"],
            dropped=self.grabber.stats.dropped,
            median_ms=s["median_ms"],
            p99_total_ms=s["p99_total_ms"],
            backend=self.model.backend,
            backend_version=self.model.backend_version,
            amx=amx_label(),
            color_swap=self.color_swap,
            published=self.mqtt.published if self.mqtt else 0,
            publish_dropped=self.mqtt.dropped if self.mqtt else 0,
            reconnects=self.grabber.stats.reconnects,
            stopped_by=stopped_by,
            prewarms=s["prewarms"],
            prewarm_ms=s["prewarm_ms"],
            failed=s["failed"],
        )

    def request_stop(self) -> None:
        self.stop_event.set()

    def on_command(self, cmd: dict[str, Any]) -> None:
        """Commands on devices/<id>/cmd. set_threshold and status; others are reported as rejected."""
        name = cmd.get("cmd")
        if (
            name == "set_threshold"
            and isinstance(cmd.get("value"), int | float)
            and 0 <= cmd["value"] <= 1
        ):
            if self.decoder is not None:
                self.decoder.score_threshold = float(cmd["value"])
            logger.info("score threshold set to %s by command", cmd["value"])
            self._event({"event": "command", "cmd": name, "ok": True})
        elif name == "status":
            if self.mqtt is not None:
                self.mqtt.publish_status()
        else:
            logger.warning("ignored command %r", name)
            self._event(
                {
                    "event": "command",
                    "cmd": str(name),
                    "ok": False,
                    "reason": "unknown or malformed command",
                }
            )

    def _event(self, event: dict[str, Any]) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_event(
                {"device_id": self.config.device_id, "ts": round(time.time(), 3), **event}
            )

    def status(self) -> dict[str, Any]:
        """The retained status message (state online)."""
        cfg = self.config
        out: dict[str, Any] = {
            "schema": STATUS_SCHEMA,
            "state": "online",
            "device_id": cfg.device_id,
            "fleet": cfg.fleet,
            "agent_version": __version__,
            "ts": round(time.time(), 3),
            "health": self.health,
        }
        if self.bundle is not None and self.model is not None:
            m = self.bundle.manifest
            out["model"] = {
                "name": m.name,
                "version": m.version,
                "sha256": m.model.sha256,
                "profile": m.profile,
                "color_swap": self.color_swap,
            }
            out["backend"] = {
                "name": self.model.backend,
                "version": self.model.backend_version,
                "amx": amx_state().value,
            }
        if self.grabber is not None:
            out["source"] = self.grabber.source.describe()
            out["dropped"] = self.grabber.stats.dropped
        if self.pipeline is not None:
            out["frames"] = self.pipeline.stats.frames
            out["failed"] = self.pipeline.stats.failed
        p50, p99 = self.rolling.percentiles_ms()
        out["fps"] = round(self.rolling.fps(), 2)
        out["latency_ms"] = {"p50": p50, "p99": p99}
        return out

    def _status_loop(self) -> None:
        interval = self.config.mqtt.status_interval_s
        while not self.stop_event.wait(min(interval, 1.0)):
            self._refresh_health()
            m = self.metrics
            m.fps.set(self.rolling.fps())
            if self.grabber is not None:
                m.reconnects.set(self.grabber.stats.reconnects)
                m.dropped.set(self.grabber.stats.dropped)
            if self.mqtt is not None:
                m.mqtt_connected.set(1 if self.mqtt.connected else 0)
                m.published.set(self.mqtt.published)
                m.publish_dropped.set(self.mqtt.dropped)
                if time.monotonic() - self._last_status >= interval:
                    self._last_status = time.monotonic()
                    self.mqtt.publish_status()

    def _refresh_health(self) -> None:
        lost = self.grabber is not None and self.grabber.stats.lost_since is not None
        if lost or (self.pipeline is not None and self.pipeline.stats.failing):
            self.health = "degraded"

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
