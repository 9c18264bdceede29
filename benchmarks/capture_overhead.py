"""What capture costs the frame path: agent_overhead.py's A/B with capture on and off.

The same two agents as `benchmarks/agent_overhead.py --ab` (one camera-paced at 30 fps for
latency, one in lockstep for fps), blocks interleaved on, off, off, on. On: every result also goes
through the capture sink (drift window, policy, queue), and a capture thread encodes what the
policy picks as JPEG into an on-disk spool (no broker: nothing is sent, so only the device-side
work is measured). Off: no capture sink at all (no drift window either).

  --policy max      every frame is a candidate (sample_rate 1), capped at 600 per minute: the
                    heaviest capture the config allows at a realistic rate (10 JPEGs/s on average)
  --policy default  the defaults: band 0.3-0.6, flicker, 1% sample, 6 per minute

Other flags are agent_overhead.py's (--bundle, --video, --rounds, --frames, --threads).
Ratios are on / off, printed last with their medians.

--sink measures only what the capture sink adds to each frame on the post thread (drift window,
policy, queue hand-off) on 640x480 frames with 5 detections, capture off (drift only) and on
(the policy's picks queued for a capture thread that encodes them), rounds interleaved.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agent_overhead as bench  # noqa: E402
import numpy as np  # noqa: E402

from agent.app import Agent  # noqa: E402
from agent.capture.capturer import Capturer, CaptureSink  # noqa: E402
from agent.config.capture import CaptureConfig, CapturePolicy  # noqa: E402
from agent.decoders.base import BBox, Detection  # noqa: E402
from agent.outputs.messages import FrameResult, ModelRef  # noqa: E402
from agent.sources.grabber import Frame  # noqa: E402

POLICIES = {
    "max": CapturePolicy(sample_rate=1.0, max_per_minute=600, max_bytes_per_day=10**12),
    "default": CapturePolicy(),
}


class CaptureSwitch:
    """Adds (on) or removes (off) a running capturer's sink from an agent's outputs."""

    def __init__(self, policy: CapturePolicy, spool: Path) -> None:
        self.policy = policy
        self.spool = spool
        self.sinks: dict[int, CaptureSink] = {}

    def __call__(self, agent: Agent, on: bool) -> None:
        assert agent.outputs is not None
        sink = self.sinks.get(id(agent))
        if sink is None:
            config = CaptureConfig(enabled=True, policy=self.policy)
            capturer = Capturer(config, f"bench-{id(agent)}", None, self.spool / str(id(agent)))
            capturer.start()
            sink = self.sinks[id(agent)] = CaptureSink(capturer)
        sinks = agent.outputs.sinks
        if on and sink not in sinks:
            sinks.append(sink)
        elif not on and sink in sinks:
            sinks.remove(sink)


def sink_cost(policy: CapturePolicy, spool: Path, rounds: int = 15, frames: int = 2000) -> None:
    """Median microseconds per frame of CaptureSink.write, capture off and on, interleaved."""
    model = ModelRef("bench", 1, "0" * 64, "x86-avx2", "detection")
    image = np.zeros((480, 640, 3), np.uint8)
    dets = [Detection(i % 4, str(i % 4), 0.3 + 0.1 * i, BBox(10, 20, 60, 90)) for i in range(5)]
    results = [FrameResult(Frame(image, i, 0.0, 0.0, 0.0), dets, model) for i in range(frames)]
    sinks = {}
    for on in (False, True):
        capturer = Capturer(CaptureConfig(enabled=on, policy=policy), "bench", None, spool)
        capturer.start()
        sinks[on] = CaptureSink(capturer)
    per_frame: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds + 1):
        for on in (False, True, True, False):
            t = time.perf_counter()
            for result in results:
                sinks[on].write(result, b"")
            if r:  # round 0 warms up
                per_frame[on].append((time.perf_counter() - t) / frames * 1e6)
    for sink in sinks.values():
        sink.capturer.stop()
    off_us, on_us = (float(np.median(per_frame[k])) for k in (False, True))
    print(f"capture sink per frame, median of {rounds} interleaved rounds of {frames} frames:")
    print(f"  capture off (drift window only): {off_us:.2f} us; capture on: {on_us:.2f} us")
    print(f"  share of a 30 fps frame period (33.3 ms), capture on: {on_us / 33_333:.4%}")


def main() -> None:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--policy", choices=sorted(POLICIES), default="max")
    ap.add_argument("--sink", action="store_true")
    ap.add_argument("-h", "--help", action="store_true")
    ours, rest = ap.parse_known_args()
    if ours.help:
        print(__doc__)
        return
    if ours.sink:
        with tempfile.TemporaryDirectory(prefix="edgegap-capture-bench-") as spool:
            print(f"capture policy: {ours.policy} ({POLICIES[ours.policy].model_dump()})")
            sink_cost(POLICIES[ours.policy], Path(spool))
        return
    with tempfile.TemporaryDirectory(prefix="edgegap-capture-bench-") as spool:
        switch = CaptureSwitch(POLICIES[ours.policy], Path(spool))
        bench.MECHANISMS["capture"] = switch
        report = bench.report

        def report_with_counts(
            what: str, results: list[tuple[str, dict[str, Any]]], args: argparse.Namespace
        ) -> None:
            """The capture counts first: the ratios stay last."""
            print(f"capture policy: {ours.policy} ({POLICIES[ours.policy].model_dump()})")
            for sink in switch.sinks.values():
                c = sink.capturer.status()["captures"]
                print(f"captures: {c['waiting']} spooled, {c['dropped']} dropped (queue or "
                      f"spool full), {c['capped']} held back by caps")  # fmt: skip
                sink.capturer.stop()
            report(what, results, args)

        bench.report = report_with_counts
        sys.argv = [sys.argv[0], *rest, "--ab", "capture"]
        bench.main()


if __name__ == "__main__":
    main()
