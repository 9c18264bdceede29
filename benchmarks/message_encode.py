"""The detections message, formatted (agent.outputs.messages.DetectionsEncoder) against built as a dict
and encoded by the json module, as the agent did before. Both write the same message.

A camera-paced frame builds its message right after an invoke that has pushed Python's code and
data out of the CPU caches, so each call is timed twice: back to back (warm), and after 30 ms
of sleep and a pass over a buffer larger than the L2 cache (cold, as at camera pace). Calls are
interleaved dict, format, format, dict, so noise and drift hit both alike.

  ratio = median formatted time / median dict+json time (cold, then warm)

Usage: python benchmarks/message_encode.py [--rounds 150] [--detections 3] [--evict-mb 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.decoders.base import BBox, Detection  # noqa: E402
from agent.outputs.messages import (  # noqa: E402
    DETECTIONS_SCHEMA,
    LATENCY_STAGES,
    DetectionsEncoder,
    FrameResult,
    ModelRef,
    encode,
)
from agent.sources.grabber import Frame  # noqa: E402


def as_dict(result: FrameResult, device_id: str, fleet: str, sent: float) -> bytes:
    """The baseline: the message as a dict of rounded numbers, encoded by the json module."""
    f, m, t = result.frame, result.model, result.timings
    latency = {s: round(t[s] * 1000.0, 3) for s in LATENCY_STAGES}
    latency["total"] = round(sum(latency.values()), 3)
    payload: dict[str, Any] = {
        "schema": DETECTIONS_SCHEMA,
        "device_id": device_id,
        "fleet": fleet,
        "frame": {"index": f.index, "timestamp": round(f.timestamp, 6), "width": f.width,
                  "height": f.height},
        "model": {"name": m.name, "version": m.version, "task": m.task},
        "detections": [
            {"label": d.label, "class_id": d.class_id, "score": round(d.score, 4),
             "box": d.box.as_list() if d.box is not None else None}
            for d in result.detections
        ],
        "latency_ms": latency,
        "sent": round(sent, 6),
    }  # fmt: skip
    return encode(payload)


def sample(detections: int, rng: np.random.Generator) -> FrameResult:
    image = np.zeros((480, 640, 3), np.uint8)
    frame = Frame(image, 1234, time.time(), time.perf_counter(), 0.0004)
    dets = []
    for _ in range(detections):
        x, y = rng.uniform(0, 500), rng.uniform(0, 380)
        box = BBox(x, y, x + rng.uniform(20, 140), y + rng.uniform(20, 100))
        c = int(rng.integers(0, 10))
        dets.append(Detection(c, str(c), float(rng.uniform(0.3, 1.0)), box))
    timings = {s: float(rng.uniform(0.00001, 0.002)) for s in LATENCY_STAGES}
    model = ModelRef("detector", 20261125221435, "0" * 64, "x86-avx2", "detection")
    return FrameResult(frame, dets, model, timings)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=150, help="dict/format/format/dict rounds.")
    ap.add_argument("--detections", type=int, default=3, help="Detections per message.")
    ap.add_argument(
        "--evict-mb", type=float, default=8.0, help="Buffer passed over before a cold call."
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    result = sample(args.detections, rng)
    encoder = DetectionsEncoder("cam-01", "warehouse", result.model)
    baseline = lambda sent: as_dict(result, "cam-01", "warehouse", sent)  # noqa: E731
    candidate = lambda sent: encoder(result, sent)  # noqa: E731
    a, b = json.loads(baseline(1.5)), json.loads(candidate(1.5))
    a_total, b_total = a["latency_ms"].pop("total"), b["latency_ms"].pop("total")
    assert a == b and abs(a_total - b_total) <= 0.003, "the two writers disagree"
    evict = np.ones(int(args.evict_mb * 2**20), np.uint8)

    def timed(fn: Any, cold: bool) -> float:
        if cold:
            time.sleep(0.03)
            evict.sum()  # like an invoke, leaves little of the caches to the next Python call
        t0 = time.perf_counter()
        fn(time.time())
        return time.perf_counter() - t0

    times: dict[tuple[str, bool], list[float]] = {}
    for cold in (True, False):
        for _ in range(args.rounds if cold else args.rounds * 20):
            for name, fn in (("dict", baseline), ("format", candidate), ("format", candidate),
                             ("dict", baseline)):  # fmt: skip
                times.setdefault((name, cold), []).append(timed(fn, cold))
    size = len(candidate(time.time()))
    print(f"detections message: {args.detections} detections, {size} bytes; "
          f"{2 * args.rounds} cold and {40 * args.rounds} warm calls of each writer")  # fmt: skip
    med = {k: float(np.median(v)) * 1e6 for k, v in times.items()}
    for cold, label in ((False, "warm (back to back)"), (True, "cold (after sleep and eviction)")):
        f, d = med[("format", cold)], med[("dict", cold)]
        print(f"{label}: ratio formatted / dict+json {f / d:.3f}  ({f:.1f} us / {d:.1f} us)")


if __name__ == "__main__":
    main()
