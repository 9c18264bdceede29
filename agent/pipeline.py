"""The frame loop: grab -> pre -> invoke -> post -> publish, timed per stage.

The inference thread takes the newest frame (already prepared by the grabber thread, or
prepared here), runs the served model's interpreter, then copies out only the outputs its decoder
needs. Decoding and publishing run on a second thread, so frame N is decoded and published while
frame N+1 is inferred (overlap_post). A frame's end-to-end latency ("total") runs from the moment
it was captured (decoded) to the moment its result was published.

The pipeline serves one `ServedModel` at a time. `swap()` hands it another, which takes over at
the next frame: the frame in flight finishes, decoded by the model that inferred it.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.bundle.manifest import OutputRole
from agent.failure import FailureWatch
from agent.metrics import AgentMetrics, PipelineStats, RollingStats
from agent.outputs.messages import STAGES, FrameResult
from agent.outputs.sinks import Outputs
from agent.preprocess import FrameTransform, dequantize
from agent.served import ServedModel
from agent.sources.grabber import Frame, Grabber

logger = logging.getLogger(__name__)

# Told about every frame: the model that served it, its invoke seconds, or the error that failed
# it: with no invoke time, the invoke; with one, decoding or publishing. Called on the inference or the post thread: it must be quick.
FrameObserver = Callable[[ServedModel, float | None, BaseException | None], None]


@dataclass
class _Job:
    served: ServedModel  # the model that inferred the frame, which also decodes it
    frame: Frame
    transform: FrameTransform
    raw: dict[OutputRole | int, np.ndarray]
    timings: dict[str, float]
    picked: float


class _PostWorker:
    """The decode-and-publish thread; a queue of one keeps it at most a frame behind.

    submit() hands a job to the thread only when that helps: while the worker is still busy,
    or when the next frame is already waiting (throughput-bound). When the worker is idle and
    no frame waits (latency-bound, e.g. a camera slower than the model), the caller decodes
    inline and saves a thread hand-off. Results are always published in frame order.
    """

    def __init__(self, fn: Callable[[_Job], None]) -> None:
        self._fn = fn
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()  # held while a job is processed, on either thread
        self._pending = 0  # jobs queued and not yet finished
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgegap-post", daemon=True)
        self._thread.start()

    def submit(self, job: _Job, next_frame_waiting: bool) -> None:
        if not next_frame_waiting and self._run_if_idle(job):
            return
        with self._lock:
            self._pending += 1
        self._queue.put(job)

    def _run_if_idle(self, job: _Job) -> bool:
        """Process job on the caller's thread, unless a job is being processed or waits; True if
        done."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._pending:
                return False
            self._process(job)
            return True
        finally:
            self._lock.release()

    def _process(self, job: _Job) -> None:
        if self.error is not None:
            return
        try:
            self._fn(job)
        except BaseException as exc:  # re-raised on the inference thread
            self.error = exc

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                self._process(job)
                self._pending -= 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


class Pipeline:
    """Serves a ServedModel on frames from a grabber and publishes each result to the outputs."""

    def __init__(
        self,
        served: ServedModel,
        grabber: Grabber,
        outputs: Outputs,
        metrics: AgentMetrics | None = None,
        rolling: RollingStats | None = None,
        overlap: bool = True,
    ) -> None:
        self.served = served
        self.grabber = grabber
        self.outputs = outputs
        self.metrics = metrics
        self.rolling = rolling or RollingStats()
        self.overlap = overlap
        self.stats = PipelineStats()
        self._next: ServedModel | None = None  # handed over by swap(), taken at the next frame
        self.observer: FrameObserver | None = None  # set by the updater (probation)
        self.watch: FailureWatch | None = None  # set by the agent: failing frames in a row

    def swap(self, served: ServedModel) -> None:
        """Serve `served` from the next frame on (thread-safe: one reference is replaced)."""
        self._next = served

    def run(self, stop: threading.Event, max_frames: int = 0) -> int:
        """Process frames until stop is set, the source ends, or max_frames (0: no limit) are done.

        Returns the number of frames inferred; re-raises a source failure. A frame whose decoding
        or publishing raises is logged and skipped (stats.failed), and serving goes on.
        """
        worker = _PostWorker(self._post) if self.overlap else None
        pending: _Job | None = None  # inferred, its post deferred until the next invoke starts
        n = 0
        started = time.perf_counter()
        try:
            while not stop.is_set() and (not max_frames or n < max_frames):
                if worker is not None and worker.error is not None:
                    break
                if self.watch is not None:
                    self.watch.check()  # raises ServingFailed after its time in health failed
                frame = self.grabber.next(timeout=0.25)
                if frame is None:
                    if pending is not None and worker is not None:
                        worker.submit(pending, False)
                        pending = None
                    if self.grabber.done:
                        break
                    continue
                if n == 0:
                    started = time.perf_counter()  # waiting for the first frame is not busy time
                handoff: Callable[[], None] | None = None
                if pending is not None and worker is not None:
                    # Handed over between set_input and invoke, so the post thread's Python work
                    # runs while the interpreter (which releases the GIL) works on this frame,
                    # not while this thread still needs the GIL to prepare and load it.
                    handoff = functools.partial(worker.submit, pending, True)
                    pending = None
                job = self._observed_infer(self._take_served(), frame, handoff)
                n += 1
                if job is None:
                    continue
                if worker is None:
                    self._post(job)
                elif self.grabber.has_frame() and not stop.is_set() and n != max_frames:
                    pending = job
                else:
                    worker.submit(job, False)
        finally:
            if worker is not None:
                if pending is not None:
                    worker.submit(pending, False)
                worker.close()
            if n:
                self.stats.busy_s += time.perf_counter() - started
        if worker is not None and worker.error is not None:
            raise worker.error
        if self.grabber.done and self.grabber.error is not None and not stop.is_set():
            raise self.grabber.error
        return n

    def _take_served(self) -> ServedModel:
        """The model for this frame: a swapped-in one replaces the current one here."""
        nxt, self._next = self._next, None
        if nxt is not None:
            self.served = nxt
            self.grabber.prepare = nxt.preprocess if self.grabber.prepare is not None else None
        return self.served

    def _observed_infer(
        self, served: ServedModel, frame: Frame, handoff: Callable[[], None] | None
    ) -> _Job | None:
        """_infer, reported to the observer; with one set, a frame whose invoke raises is counted
        as failed and skipped (the observer rolls the model back) instead of ending the run."""
        observer = self.observer
        if observer is None:
            return self._infer(served, frame, handoff)
        called: list[bool] = []

        def once() -> None:
            if handoff is not None and not called:
                called.append(True)
                handoff()

        try:
            job = self._infer(served, frame, once)
        except Exception as exc:
            once()  # the previous frame's result still goes out
            self.stats.failed += 1
            logger.error("frame %d: invoke failed: %s", frame.index, exc)
            observer(served, None, exc)
            return None
        observer(served, job.timings["invoke"], None)
        return job

    def _infer(
        self, served: ServedModel, frame: Frame, before_invoke: Callable[[], None] | None
    ) -> _Job:
        """Load the frame's input (the grabber's, if this model's pre-processing made it; else
        written straight into the interpreter's input buffer), invoke, copy the needed outputs."""
        model = served.model
        picked = time.perf_counter()
        prepared = frame.prepared
        if prepared is not None and prepared.by is served.preprocess:
            pre_s, wait_s = frame.pre_s, picked - frame.captured - frame.pre_s
            transform = prepared.transform
            t1 = time.perf_counter()
            model.set_input(prepared.tensor)
        else:
            transform = model.write_input(lambda buf: served.preprocess(frame.image, buf)[1])
            t1 = time.perf_counter()
            pre_s, wait_s = t1 - picked, picked - frame.captured
        if before_invoke is not None:
            before_invoke()
        model.invoke()
        t2 = time.perf_counter()
        raw = {role: model.get(spec.index) for role, spec in served.needed}
        t3 = time.perf_counter()
        timings = {
            "grab": frame.grab_s, "pre": pre_s, "wait": max(wait_s, 0.0), "invoke": t2 - t1, "post": t3 - t2,
        }  # fmt: skip
        return _Job(served, frame, transform, raw, timings, picked)

    def _post(self, job: _Job) -> None:
        t0 = time.perf_counter()
        try:
            result = self._result(job)
            t1 = time.perf_counter()
            job.timings["post"] += t1 - t0
            self.outputs.publish(result)
        except (
            Exception
        ) as exc:  # one frame's bad outputs (or a bug they hit) must not stop serving
            self._failed(job, exc)
            return
        t2 = time.perf_counter()
        job.timings["publish"] = t2 - t1
        total = t2 - job.frame.captured
        self._record(job.timings, total, len(result.detections))

    def _result(self, job: _Job) -> FrameResult:
        """The frame's outputs, dequantized where they are integers, decoded into its result."""
        outs: dict[OutputRole | int, np.ndarray] = {}
        for role, spec in job.served.needed:
            raw = job.raw[role]
            outs[role] = (
                raw if spec.dtype == "float32" else dequantize(raw, spec.scale, spec.zero_point)
            )
        decoder = job.served.decoder
        detections = decoder(outs, job.transform)
        result = FrameResult(job.frame, detections, job.served.ref, job.timings, job.picked)
        if decoder.publishes_tensors:
            result.tensors = decoder.tensors(outs)
        return result

    def _failed(self, job: _Job, exc: Exception) -> None:
        """Count a frame whose decoding or publishing raised; log the first of each run of them."""
        if self.observer is not None:
            self.observer(job.served, job.timings["invoke"], exc)
        s = self.stats
        s.failed += 1
        s.failing += 1
        if self.watch is not None:
            self.watch.frame_failed(exc)
        if s.failing == 1:
            logger.error(
                "frame %d: decoding or publishing failed; the frame is skipped and serving goes on",
                job.frame.index,
                exc_info=exc,
            )
        if self.metrics is not None:
            self.metrics.failed.inc()

    def _record(self, timings: dict[str, float], total: float, detections: int) -> None:
        s = self.stats
        if s.failing:
            logger.info("outputs work again after %d failed frame(s)", s.failing)
            s.failing = 0
            if self.watch is not None:
                self.watch.frame_ok()
        s.frames += 1
        for stage in STAGES:
            s.stages[stage].append(timings[stage])
        s.stages["total"].append(total)
        self.rolling.add(total)
        m = self.metrics
        if m is not None:
            for stage in STAGES:
                m.observe(stage, timings[stage])
            m.observe("total", total)
            m.frames.inc()
            m.detections.inc(detections)
            m.dropped.set(self.grabber.stats.dropped)
