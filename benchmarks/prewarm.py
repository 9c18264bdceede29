"""What pipeline.prewarm_ms buys: camera-paced frame latency with prewarming on and off, in one run.

Two agents serve the same int8 detector on the same MJPG clip, played at its 30 fps (camera pace:
frames are read inline and the inference thread idles between them). One prewarms (the default
lead, or --prewarm-ms), one does not (pipeline.prewarm_ms: 0). They take turns in blocks of
frames ordered on, off, off, on (ABBA), each block restarting the clip's pacing, so machine noise
and drift hit both alike. Printed: each agent's stage medians, its prewarm passes (count and median
time, spent off the frame path), then the median frame latency (captured -> published) of each
and their ratio, last.

Usage:
  python benchmarks/prewarm.py [--bundle DIR] [--video FILE] [--rounds 12] [--frames 40]
                               [--prewarm-ms 2] [--threads 1] [--amx auto|use|withhold]

Without --bundle it converts the reference detector as benchmarks/agent_overhead.py does (int8,
x86-avx2); without --video it renders that benchmark's 30 fps clip at the model's input size.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from agent_overhead import (  # noqa: E402
    bundle_to_serve,
    model_size,
    paced_block,
    render_video,
    start_agent,
)


def measure(args: argparse.Namespace, bundle: Path, video: Path) -> dict[str, Any]:
    on = start_agent(bundle, video, "native", args.threads, None, amx=args.amx,
                     prewarm_ms=args.prewarm_ms)  # fmt: skip
    off = start_agent(bundle, video, "native", args.threads, None, amx=args.amx, prewarm_ms=0.0)
    lat: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for r in range(args.rounds + 1):  # round 0 warms up and is discarded
            a = paced_block(on, args.frames)
            b = paced_block(off, args.frames) + paced_block(off, args.frames)
            a += paced_block(on, args.frames)
            if r:
                lat["on"] += a
                lat["off"] += b
        out: dict[str, Any] = {}
        for name, agent in (("on", on), ("off", off)):
            assert agent.pipeline is not None and agent.grabber is not None
            st = agent.pipeline.stats
            out[name] = {
                "latency_ms": float(np.median(lat[name])) * 1000,
                "frames": len(lat[name]),
                "inline": agent.grabber.stats.inline,
                "stages": {s: st.median_ms(s) for s in ("pre", "wait", "invoke", "post", "publish")},
                "prewarms": st.prewarms,
                "prewarm_ms": st.median_prewarm_ms(),
            }
        out["backend"] = f"{on.model.backend} {on.model.backend_version}" if on.model else "?"
    finally:
        on.close()
        off.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, help="Bundle to serve (default: the reference detector).")
    ap.add_argument("--video", type=Path, help="Video file (default: a 30 fps test-split clip).")
    ap.add_argument("--rounds", type=int, default=12, help="Interleaved rounds.")
    ap.add_argument("--frames", type=int, default=40, help="Frames per block.")
    ap.add_argument(
        "--prewarm-ms", type=float, default=2.0, help="The prewarming agent's lead, ms."
    )
    ap.add_argument("--threads", type=int, default=1, help="Interpreter threads.")
    ap.add_argument(
        "--amx", choices=["auto", "use", "withhold"], default="auto", help="runtime.amx of both."
    )
    args = ap.parse_args()
    if args.prewarm_ms <= 0:
        ap.error("--prewarm-ms must be positive: the other agent already runs without prewarming")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="edgegap-bench-") as tmp:
        work = Path(tmp)
        bundle, what = bundle_to_serve(args.bundle, work)
        size = model_size()
        video = args.video or render_video(work / "clip.avi", (size, size))
        r = measure(args, bundle, video)
    print(f"model: {what}; backend {r['backend']}, {args.threads} interpreter thread(s); "
          f"source {video.name} at 30 fps, blocks of {args.frames} frames, {args.rounds} rounds")  # fmt: skip
    for name, label in (("off", "prewarm off"), ("on", f"prewarm {args.prewarm_ms:g} ms")):
        x = r[name]
        stages = "  ".join(f"{k} {v:.3f}" for k, v in x["stages"].items() if v is not None)
        extra = (
            f"; {x['prewarms']} prewarm passes, median {x['prewarm_ms']:.3f} ms off the frame path"
            if x["prewarms"]
            else ""
        )
        print(f"  {label:16s} stage medians (ms): {stages}  ({x['frames']} frames, "
              f"{x['inline']} read inline{extra})")  # fmt: skip
    on, off = r["on"]["latency_ms"], r["off"]["latency_ms"]
    print(f"  frame latency (captured -> published), median: prewarm off {off:.3f} ms, "
          f"on {on:.3f} ms")  # fmt: skip
    print(f"latency ratio (prewarm on / off): {on / off:.3f}")


if __name__ == "__main__":
    main()
