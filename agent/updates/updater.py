"""The updater: one thread that follows the channel, pulls, activates, watches probation, rolls
back, and carries out commands. MQTT callbacks only put work on its queue; the frame path never
waits for it. Whatever fails here is reported as an event and the last good model keeps serving.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.capture.capturer import Capturer
from agent.config import AgentConfig
from agent.mqtt import MqttLink
from agent.pipeline import Pipeline
from agent.runtime import compiled
from agent.served import ServedModel, no_weight_cache
from agent.store import BundleStore, Staging, StoreError, clean_staging
from agent.updates import activation
from agent.updates.checks import Device, Ignored, Rejected, check_release
from agent.updates.commands import run_command
from agent.updates.events import Events
from agent.updates.pins import Pin
from agent.updates.probation import Probation
from agent.updates.protocol import SHA256, EventKind, Limits, followed_stages
from agent.updates.pull import Pull, PullSettings

logger = logging.getLogger(__name__)

TICK_S = 0.05


@dataclass(frozen=True)
class _Work:
    kind: str  # release, chunk, command, stop
    payload: bytes = b""
    sha256: str = ""
    index: int = -1
    topic: str = ""  # a release's topic


class Updater:
    """Owns the store's pointers and the pipeline's model once serving has begun."""

    def __init__(
        self,
        config: AgentConfig,
        pipeline: Pipeline,
        link: MqttLink,
        store: BundleStore | None,
        keys: list[Ed25519PublicKey],
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.link = link
        self.store = store
        self.keys = keys
        u = config.updates
        self.channel = u.channel
        self.topics = link.topics
        # the release topics followed: the group's own stage and every later one (docs/protocol.md)
        channel, stages = u.channel or "", followed_stages(u.group) if u.channel else ()
        self.release_topics = tuple(self.topics.release(channel, s) for s in stages)
        # each stage's announce topic, to the release topic it announces for
        self.announce_topics = {
            self.topics.announce(channel, s): self.topics.release(channel, s) for s in stages
        }
        self.limits = Limits(max_model_bytes=u.max_bundle_bytes, max_chunks=u.max_chunks)
        self.settings = PullSettings(u.window, u.chunk_timeout_s, u.max_retries)
        self.events = Events(link, config.device_id)
        self.pin = Pin(u.state_dir if store is not None else None)
        self.previous: ServedModel | None = None  # kept loaded for a fast rollback
        self.pull: Pull | None = None
        self.pull_topic = ""  # the release topic the pull came from
        self.probation: Probation | None = None
        self.capture: Capturer | None = None  # set by the agent; the `capture` commands use it
        self.profiles = frozenset(u.profiles or [pipeline.served.manifest.profile])
        self._queue: queue.Queue[_Work] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="edgegap-updates", daemon=True)
        link.on_message = self._on_message
        if u.weight_cache:
            compiled.unavailable()  # imports and starts LiteRT's CompiledModel before frames flow
        if store is not None:
            pipeline.observer = self._observe

    # ---- the MQTT side: enqueue only --------------------------------------------------------
    def start(self, probation: bool = False) -> None:
        """Start the thread; probation: the model serving now has not passed probation yet."""
        if probation:
            self._start_probation(self.pipeline.served)
        self._thread.start()
        for topic in (*self.release_topics, *self.announce_topics):
            self.link.subscribe(topic)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_Work("stop"))
            self._thread.join(timeout=10)

    def on_command(self, raw: bytes) -> None:
        self._queue.put(_Work("command", raw))

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic in self.release_topics:
            self._queue.put(_Work("release", payload, topic=topic))
            return
        if topic in self.announce_topics:  # the release ahead of its chunks; never a withdrawal
            if payload:
                self._queue.put(_Work("release", payload, topic=self.announce_topics[topic]))
            return
        parts = topic[len(self.topics.prefix) + 1 :].split("/")
        if (
            len(parts) == 3
            and parts[0] == "blobs"
            and SHA256.match(parts[1])
            and parts[2].isdigit()
        ):
            self._queue.put(_Work("chunk", payload, parts[1], int(parts[2])))

    def _observe(
        self, served: ServedModel, invoke_s: float | None, error: BaseException | None
    ) -> None:
        probation = self.probation
        if probation is not None:
            probation.observe(served, invoke_s, error)

    # ---- the updater thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                work = self._queue.get(timeout=TICK_S)
            except queue.Empty:
                work = None
            if work is not None and work.kind == "stop":
                if self.pull is not None:
                    self.pull.stop()
                return
            try:
                if work is not None:
                    self._handle(work)
                self._tick()
            except Rejected as exc:
                self._rejected(exc)
            except Exception as exc:  # never let a bad update stop the thread
                logger.exception("update step failed")
                self._rejected(Rejected(f"internal error: {type(exc).__name__}: {exc}"))

    def _handle(self, work: _Work) -> None:
        if work.kind == "release":
            self.on_release(work.payload, work.topic)
        elif work.kind == "chunk":
            pull = self.pull
            if pull is not None and pull.sha256 == work.sha256:
                pull.on_chunk(work.index, work.payload)
                if pull.done:
                    self._finish_pull(pull)
        elif work.kind == "command":
            run_command(self, work.payload)

    def _tick(self) -> None:
        if self.pull is not None:
            self.pull.tick()
        if self.probation is not None:
            self._judge(self.probation)

    def _rejected(self, exc: Rejected) -> None:
        if self.pull is not None and (exc.sha256 is None or exc.sha256 == self.pull.sha256):
            self.pull.stop()
            self.pull = None
        self.events.emit(EventKind.REJECTED, exc.version, exc.sha256, reason=exc.reason)

    # ---- a release ------------------------------------------------------------------------
    def device(self) -> Device:
        store = self.store
        return Device(
            channel=self.channel or "",
            limits=self.limits,
            keys=self.keys,
            active=self.pipeline.served.manifest,
            profiles=self.profiles,
            is_rejected=store.rejections.holds if store is not None else (lambda s, v: False),
            pinned=self.pin.version,
            older_ignored=len(self.release_topics) > 1,
        )

    def on_release(self, raw: bytes, topic: str = "") -> None:
        if not raw:  # a cleared retained release: a download it started is withdrawn with it
            self._withdrawn(topic)
            return
        try:
            release = check_release(raw, self.device())
        except Ignored as exc:
            logger.info("%s", exc)
            return
        m, blob = release.manifest, release.blob
        if self.pull is not None:
            if self.pull.sha256 == blob.sha256:
                return  # already on it
            if self.pull.release.manifest.version > m.version:
                logger.info(
                    "release v%d ignored: pulling v%d",
                    m.version,
                    self.pull.release.manifest.version,
                )
                return  # another stage followed offers a newer one
            self.pull.stop()
            self.pull = None
        assert self.store is not None
        self.events.emit(EventKind.AVAILABLE, m.version, blob.sha256, channel=release.channel)
        state = self.config.updates.state_dir
        clean_staging(state, keep=blob.sha256)
        if self.store.is_installed(blob.sha256):
            self.store.install(m, self.store.path(blob.sha256) / "model.tflite")  # this manifest
            self.events.emit(EventKind.VERIFIED, m.version, blob.sha256)
            self.activate(m.version, blob.sha256)
            return
        try:
            staging = Staging(state, blob, self.limits)
        except StoreError as exc:
            raise Rejected(str(exc), m.version, blob.sha256) from exc
        if self.config.updates.weight_cache and no_weight_cache(self.config, m) is None:
            compiled.start_ahead()  # the child that packs its weights starts while it downloads
        progress = functools.partial(self._progress, m.version, blob.sha256)
        pull = Pull(release, staging, self.link, self.topics, self.settings, progress)
        self.pull, self.pull_topic = pull, topic
        pull.start()
        if pull.done:
            self._finish_pull(pull)

    def _withdrawn(self, topic: str) -> None:
        """A halted rollout clears its canary release: a download of it stops there."""
        pull = self.pull
        if pull is None or not topic or topic != self.pull_topic:
            return
        m = pull.release.manifest
        raise Rejected("the release was withdrawn while downloading", m.version, pull.sha256)

    def _progress(self, version: int, sha: str, have: int, of: int) -> None:
        progress = {"chunks": have, "of": of}
        self.events.emit(EventKind.DOWNLOADING, version, sha, progress=progress)

    def _finish_pull(self, pull: Pull) -> None:
        self.pull = None
        m, sha = pull.release.manifest, pull.sha256
        assert self.store is not None
        try:  # the chunks go into the store, which writes the model once and checks its sha256
            self.store.install(m, pull.staging.chunks())
        except StoreError as exc:
            # every chunk matched its hash, so the release's chunk list disagrees with its model
            pull.staging.discard()
            self.store.rejections.add(sha, m.version, str(exc))
            raise Rejected(str(exc), m.version, sha) from exc
        pull.staging.discard()
        self.events.emit(EventKind.VERIFIED, m.version, sha)
        self.activate(m.version, sha)

    # ---- activation, probation, rollback ---------------------------------------------------
    def load(self, sha: str, version: int) -> ServedModel:
        """Bundle sha from the store as a ServedModel; a failure rejects it (Rejected)."""
        assert self.store is not None
        try:
            return activation.load(self.store.path(sha), self.config, self.keys)
        except Exception as exc:
            reason = f"does not load: {exc}"[:300]
            self.store.rejections.add(sha, version, reason)
            raise Rejected(reason, version, sha) from exc

    def activate(self, version: int, sha: str, probation: bool = True) -> None:
        """Load bundle sha from the store and serve it; without probation (an operator's pin)
        it is marked good at once."""
        assert self.store is not None
        self.events.emit(EventKind.ACTIVATING, version, sha)
        served = self.load(sha, version)
        old = self.serve(served)
        self.store.activate(sha)
        if not probation:
            self.store.mark_good(sha)
        self.events.emit(EventKind.ACTIVATED, version, sha, previous=old.manifest.version)
        if probation:
            self._start_probation(served)
        self.link.publish_status()

    def serve(self, served: ServedModel) -> ServedModel:
        """Swap served in between two frames; returns the model it replaced (kept as previous)."""
        old = self.pipeline.served
        self.probation = None
        activation.swap(self.pipeline, served)
        self.previous = old
        return old

    def _start_probation(self, served: ServedModel) -> None:
        u = self.config.updates
        self.probation = Probation(served, u.probation_frames, u.probation_s, u.latency_factor)

    def _judge(self, probation: Probation) -> None:
        verdict = probation.verdict()
        if verdict is None:
            return
        self.probation = None
        m = probation.served.manifest
        sha = m.model.sha256
        assert self.store is not None
        if verdict.passed:
            self.store.mark_good(sha)
            self.store.prune()
            self.events.emit(EventKind.PROBATION_PASSED, m.version, sha)
            self.link.publish_status()  # its model.good is news to a rollout controller
            return
        self.store.rejections.add(sha, m.version, verdict.reason)
        self.roll_back(verdict.reason)

    def roll_back(self, reason: str) -> bool:
        """Serve the previous (or good) bundle; False when there is none (logged, as it was)."""
        assert self.store is not None
        current = self.pipeline.served.manifest
        try:
            target = self.store.rollback()
        except StoreError as exc:
            logger.error("cannot roll back from %s v%d: %s", current.name, current.version, exc)
            self.events.emit(
                EventKind.REJECTED, current.version, current.model.sha256, reason=f"{reason}; {exc}"
            )
            return False
        prev = self.previous
        if prev is not None and prev.manifest.model.sha256 == target:
            served = prev
        else:
            served = self.load(target, self.store.manifest(target).version)
        self.serve(served)
        to = served.manifest.version
        self.events.emit(
            EventKind.ROLLED_BACK, current.version, current.model.sha256, reason=reason, to=to
        )
        self.link.publish_status()
        return True
