"""How much the agent adds on top of the interpreter: frame latency and sustained fps, in one run.

The agent serves an int8 detector on MJPG clips of the detector's held-out test split, at the
model's native input size and upscaled to a camera-like 640x480. Two agents share the run: one plays
the clip at its 30 fps (camera pacing: latency-bound), one in lockstep (every frame, the grabber
decoding the next frame while the model runs: throughput-bound). Each round has two phases, and
each phase interleaves blocks of agent frames with blocks of bare interpreter.invoke() calls on
the same model, so machine noise hits both sides alike:

  latency phase:    paced bare invokes to settle, then agent, bare, bare, agent (ABBA), paced
  throughput phase: a short warm-up of both, then agent, bare, bare, agent (ABBA), back to back

  latency ratio = median agent frame latency (captured -> published, camera-paced)
                  / median bare invoke (paced the same way)
  fps ratio     = sustained lockstep agent fps (1 / median block frame period)
                  / (1000 / median back-to-back bare invoke ms)

The lockstep blocks are warmed up first: a cold lockstep block right after the paced phase ran
about 10% slower for its first 40 frames than a warm one. The paced agent's grabber reads the clip
on its own thread the whole run, so a paced block first drops the frame left waiting since the
last block. Round 0 warms up and is discarded.

With --ab MECH the same agents run with a kept mechanism on and off instead of against bare
invokes (on, off, off, on blocks, paced and lockstep), and the ratios are on / off:

  ssd_small   the ssd_postprocess decoder's plain-Python path for up to SMALL_N rows
              (agent/decoders/ssd_postprocess.py); off = the NumPy array path for every frame

With --broker the agent also publishes every result to that MQTT broker (the latency then ends
when paho has handed the message to the socket); without it, results go to os.devnull as JSONL.
Without --bundle it converts the reference detector (converter/zoo/weights/detector.keras) with
`edgegap convert --profile x86-avx2` (int8, RGB, calibrated on 100 train-split images); when that
file is missing it builds a stand-in of realistic size (MobileNetV2 width 0.5 at 256 px with an
SSD head and TFLite_Detection_PostProcess, random weights) and says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from served_model import bundle_to_serve, model_size, render_video  # noqa: E402

from agent.app import Agent  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.decoders.ssd_postprocess import SMALL_N, SSDPostprocessDecoder  # noqa: E402

PERIOD = 1.0 / 30.0  # the clips' frame period: camera pace
STAGES = ("grab", "pre", "wait", "invoke", "post", "publish")


# ---- blocks ----------------------------------------------------------------------------------
def start_agent(bundle: Path, video: Path, rate: str, args: argparse.Namespace) -> Agent:
    overrides: dict[str, Any] = {
        "bundle.path": str(bundle), "source.uri": str(video), "source.rate": rate, "source.loop": True,
        "outputs.jsonl": os.devnull, "detection.score_threshold": 0.3,
    }  # fmt: skip
    if args.threads:
        overrides["runtime.threads"] = args.threads
    if args.broker:
        overrides["mqtt.broker"] = args.broker
        overrides["device_id"] = f"bench-{rate}"
    agent = Agent(load_config(None, overrides))
    agent.start()
    return agent


def bare_invokes(agent: Agent, count: int, period: float = 0.0) -> list[float]:
    """Bare invoke() times on the agent's model; with a period, paced like frames from a camera."""
    assert agent.pipeline is not None
    model, times = agent.pipeline.served.model, []
    for _ in range(count):
        t = time.perf_counter()
        model.invoke()
        times.append(time.perf_counter() - t)
        if period:
            time.sleep(max(0.0, period - (time.perf_counter() - t)))
    return times


def paced_block(agent: Agent, frames: int, drops: list[int]) -> list[float]:
    """Frame latencies (s) of one camera-paced block of the agent; its dropped frames to drops."""
    assert agent.pipeline is not None and agent.grabber is not None
    agent.grabber.next(timeout=0.0)  # the frame that waited through the other blocks: stale
    stats, dropped = agent.pipeline.stats, agent.grabber.stats.dropped
    before = stats.frames
    agent.pipeline.run(agent.stop_event, max_frames=frames)
    drops.append(agent.grabber.stats.dropped - dropped)
    total = stats.stages["total"]
    return list(total)[len(total) - (stats.frames - before) :]


def lockstep_block(agent: Agent, frames: int) -> list[float]:
    """Seconds per frame of one lockstep block of the agent."""
    assert agent.pipeline is not None
    t0 = time.perf_counter()
    n = agent.pipeline.run(agent.stop_event, max_frames=frames)
    return [(time.perf_counter() - t0) / max(n, 1)]


def set_ssd_small(agent: Agent, on: bool) -> None:
    assert agent.pipeline is not None
    decoder = agent.pipeline.served.decoder
    if not isinstance(decoder, SSDPostprocessDecoder):
        raise SystemExit(
            f"--ab ssd_small needs an ssd_postprocess bundle, not {decoder.decoder.value}"
        )
    decoder.small_n = SMALL_N if on else -1


MECHANISMS: dict[str, Callable[[Agent, bool], None]] = {"ssd_small": set_ssd_small}


# ---- one source ------------------------------------------------------------------------------
def abba(
    run: Callable[[bool], list[float]], bare: Callable[[], list[float]] | None
) -> tuple[list[float], list[float]]:
    """Blocks A, B, B, A: A is run(True) (the agent; with --ab, the mechanism on), B is bare() or,
    with --ab, run(False) (the mechanism off)."""
    a: list[float] = []
    b: list[float] = []
    for side in "abba":
        if side == "a":
            a += run(True)
        else:
            b += bare() if bare is not None else run(False)
    return a, b


def measure(bundle: Path, video: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of paced then lockstep ABBA blocks; round 0 warms up and is discarded. Medians in ms
    (the lockstep agent's as fps), the paced frames dropped, and both agents' stage medians."""
    paced = start_agent(bundle, video, "native", args)  # camera pace: latency
    flat = start_agent(bundle, video, "all", args)  # lockstep: throughput; its model for bare
    switch = MECHANISMS[args.ab] if args.ab else None
    warm, n = max(args.frames // 4, 5), args.frames
    drops: list[int] = []

    def run(agent: Agent, on: bool) -> list[float]:
        if switch is not None:
            switch(agent, on)
        return paced_block(agent, n, drops) if agent is paced else lockstep_block(agent, n)

    side: dict[str, list[float]] = {"lat_a": [], "lat_b": [], "fps_a": [], "fps_b": []}
    try:
        for r in range(args.rounds + 1):
            bare_invokes(flat, warm, PERIOD)  # settle from the busy phase into camera pace
            bare_paced = None if switch else lambda: bare_invokes(flat, n, PERIOD)
            lat = abba(lambda on: run(paced, on), bare_paced)
            lockstep_block(flat, warm)  # the CPU is cold after the paced phase: warm both up
            bare_invokes(flat, warm)
            fps = abba(lambda on: run(flat, on), None if switch else lambda: bare_invokes(flat, n))
            if not r:
                drops.clear()
                continue
            for k, v in zip(side, (*lat, *fps), strict=True):
                side[k] += v
        assert paced.pipeline is not None and flat.pipeline is not None
        assert paced.grabber is not None
        served = flat.pipeline.served
        med = {k: float(np.median(v)) * 1000 for k, v in side.items()}
        return {
            "backend": f"{served.model.backend} {served.model.backend_version}",
            "threads": served.threads, "color_swap": served.color_swap,
            "prepare_on_grab": paced.grabber.prepare is not None, "dropped": sum(drops),
            "lat_a": med["lat_a"], "lat_b": med["lat_b"], "bare_ms": med["fps_b"],
            "fps_a": 1000.0 / med["fps_a"], "fps_b": 1000.0 / med["fps_b"],
            "frames": (len(side["lat_a"]) + len(side["lat_b"]) * bool(switch),
                       len(side["fps_a"]) * n * (2 if switch else 1)),
            "stages": {s: paced.pipeline.stats.median_ms(s) for s in STAGES},
            "flat_stages": {s: flat.pipeline.stats.median_ms(s) for s in STAGES[1:5]},
        }  # fmt: skip
    finally:
        paced.close()
        flat.close()


# ---- the report ------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def report(what: str, results: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    """The header and stages first, the ratios last, each with its absolute medians beside it."""
    r0 = results[0][1]
    where = "MQTT " + args.broker + " and " if args.broker else ""
    # fmt: off
    print(f"model: {what}; backend {r0['backend']}, {r0['threads']} interpreter thread(s); color swap: "
          f"{r0['color_swap']}; input prepared on the {'grabber' if r0['prepare_on_grab'] else 'inference'} "
          f"thread; results to {where}JSONL (os.devnull)")
    print(f"machine: {os.cpu_count()} CPU(s), {cpu_model()}")
    for label, r in results:
        print(f"[source {label}] frames: {r['frames'][0]} camera-paced at 30 fps ({r['dropped']} dropped), "
              f"{r['frames'][1]} lockstep in blocks of {args.frames}; medians over {args.rounds} rounds")
        for name, key in (("camera-paced", "stages"), ("lockstep", "flat_stages")):
            stages = "  ".join(f"{k} {v:.3f}" for k, v in r[key].items() if v is not None)
            print(f"[source {label}] {name} agent stage medians (ms): {stages}")
    for label, r in results:
        fps, lat = r["fps_a"] / r["fps_b"], r["lat_a"] / r["lat_b"]
        if args.ab:
            print(f"[source {label}] {args.ab} fps ratio (on / off): {fps:.3f}  "
                  f"(on {r['fps_a']:.1f} fps; off {r['fps_b']:.1f} fps, lockstep)")
            print(f"[source {label}] {args.ab} latency ratio (on / off): {lat:.3f}  "
                  f"(on {r['lat_a']:.3f} ms; off {r['lat_b']:.3f} ms, capture->published, camera-paced)")
            continue
        print(f"[source {label}] fps ratio (agent fps / (1000 / invoke-ms), goal >= 0.9): {fps:.3f}  "
              f"(agent {r['fps_a']:.1f} fps; bare invoke back to back {r['bare_ms']:.3f} ms = {r['fps_b']:.1f} fps)")
        print(f"[source {label}] latency ratio (agent frame latency / bare invoke, goal <= 1.15): {lat:.3f}  "
              f"(capture->published {r['lat_a']:.3f} ms; bare invoke at the same pace {r['lat_b']:.3f} ms)")
    # fmt: on


def main() -> None:
    # fmt: off
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="Bundle to serve (default: the reference detector, else a stand-in).")
    ap.add_argument("--video", type=Path, help="Video file (default: test-split clips at the model's size and 640x480).")
    ap.add_argument("--rounds", type=int, default=12, help="Interleaved rounds.")
    ap.add_argument("--frames", type=int, default=40, help="Frames per block, paced and lockstep.")
    ap.add_argument("--threads", type=int, help="Interpreter threads (default: the bundle profile's).")
    ap.add_argument("--broker", help="Also publish every result to this MQTT broker.")
    ap.add_argument("--ab", choices=sorted(MECHANISMS), help="A/B a kept mechanism (on / off) instead of agent / bare.")
    # fmt: on
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="edgegap-bench-") as tmp:
        work = Path(tmp)
        bundle, what = bundle_to_serve(args.bundle, work)
        if args.video:
            videos = [(args.video.name, args.video)]
        else:
            sizes = ((model_size(), model_size()), (640, 480))
            videos = [
                (f"{w}x{h}", render_video(work / f"clip{w}x{h}.avi", (w, h))) for w, h in sizes
            ]
        results = [(label, measure(bundle, video, args)) for label, video in videos]
    report(what, results, args)


if __name__ == "__main__":
    main()
