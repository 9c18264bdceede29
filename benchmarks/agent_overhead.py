"""How much the agent adds on top of the interpreter: frame latency and sustained fps, in one run.

The agent serves an int8 detector on MJPG clips of the detector's held-out test split, at the
model's native input size and upscaled to a camera-like 640x480. Two agents share the run: one plays
the clip at its 30 fps (camera pacing: latency-bound), one in lockstep (every frame, the grabber
decoding the next frame while the model runs: throughput-bound). Each round has two phases, and
each phase interleaves blocks of agent frames with blocks of bare interpreter.invoke() calls on
the same interpreter, so machine noise hits both sides alike:

  latency phase:    paced bare invokes to settle, then agent, bare, bare, agent (ABBA), paced
  throughput phase: a short warm-up of both, then agent, bare, bare, agent (ABBA), back to back

  latency ratio = median agent frame latency (captured -> published, camera-paced)
                  / median bare invoke (paced the same way)
  fps ratio     = sustained lockstep agent fps (1 / median block frame period)
                  / (1000 / median back-to-back bare invoke ms)

Both phases are ordered ABBA, so drift over a round hits both sides alike. The lockstep blocks are
warmed up first because a lockstep block right after the paced phase ran about 10% slower for its
first 40 frames than a warm one. Each paced agent block restarts the clip's pacing: otherwise the
frames that fell due while the benchmark ran other blocks were caught up on in a burst (7 to 13
of each 40, decoded back to back and partly dropped), which is not camera pace.

Usage:
  python benchmarks/agent_overhead.py [--bundle DIR] [--video FILE] [--rounds 12] [--frames 40]
                                      [--threads N] [--pin-threads] [--broker mqtt://HOST:PORT]
                                      [--no-fold-bgr] [--amx auto|use|withhold] [--prewarm-ms MS]

With --broker the agent also publishes every result to that MQTT broker (the latency then ends
when paho has handed the message to the socket); without it, results go to a JSONL file only.
--pin-threads sets runtime.pin_threads for both agents (and so for the bare invokes, which run on
the same interpreter and thread). --amx sets runtime.amx (docs/agent.md, "Intel AMX"); the
first agent's choice holds for the whole process, bare invokes included. --prewarm-ms sets
pipeline.prewarm_ms (default: the config's); the paced agent's prewarm passes run off its frame
path, and their count and median time are printed beside the stages. --no-fold-bgr sets
runtime.fold_bgr off: an RGB model then gets its frames' channels swapped every frame instead of
having the swap folded into its first convolution when it loads (the header says which).

Without --bundle it converts the reference detector (converter/zoo/weights/detector.keras) with
`edgegap convert --profile x86-avx2` (int8, RGB, calibrated on 100 train-split images); when that file is missing it builds a stand-in of realistic
size (MobileNetV2 width 0.5 at 256 px with an SSD head and TFLite_Detection_PostProcess, random
weights) and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.app import Agent  # noqa: E402
from agent.bundle.golden import record_golden  # noqa: E402
from agent.bundle.loading import write_bundle  # noqa: E402
from agent.bundle.manifest import Decoder, InputSpec, Manifest, ModelFile, OutputRole, OutputSpec  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.runtime import open_model  # noqa: E402
from converter.amx import amx_label  # noqa: E402

logger = logging.getLogger(__name__)

REFERENCE = ROOT / "converter" / "zoo" / "weights" / "detector.keras"
SIZE = 256
CLASSES = 10


def model_size() -> int:
    """The reference detector's input side (its sidecar), or the stand-in's."""
    if not REFERENCE.is_file():
        return SIZE
    from converter.tasks.detector_config import read_sidecar

    return read_sidecar(REFERENCE)[0].input_size


def render_video(path: Path, size: tuple[int, int], frames: int = 90) -> Path:
    """An MJPG clip at 30 fps of held-out test-split images, resized to size (w, h)."""
    from converter.zoo.detection_data import generate

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    for s in generate("test", frames, size=model_size()):
        bgr = cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR)
        writer.write(_resize(bgr, size))
    writer.release()
    return path


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (img.shape[1], img.shape[0]) == size:
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def convert_reference(work: Path) -> Path | None:
    """Convert the reference detector with `edgegap convert` (int8, x86-avx2), calibrated on the
    train split; None (with the reason) on failure."""
    from converter.zoo.detection_data import generate, write_folder

    calib = work / "calib"
    calib.mkdir()
    size = model_size()
    for i, s in enumerate(generate("train", 100, size=size)):
        cv2.imwrite(str(calib / f"{i:03d}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
    val = work / "val"
    write_folder(val, list(generate("val", 100, size=size)))
    out = work / "reference-bundle"
    cmd = [sys.executable, "-m", "converter", "convert", str(REFERENCE), "--profile", "x86-avx2",
           "--calibration", str(calib), "--validation", str(val), "--task", "auto",
           "--output", str(out)]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0 or not (out / "manifest.json").is_file():
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"note: converting the reference detector failed ({tail[0]}); using the stand-in")
        return None
    return out


def bundle_to_serve(given: Path | None, work: Path) -> tuple[Path, str]:
    """The given bundle, else the reference detector converted now, else the stand-in (said
    loudly); with what it is, for the report."""
    if given is not None:
        return given, "given bundle"
    if REFERENCE.is_file():
        converted = convert_reference(work)
        if converted is not None:
            return converted, "reference detector, int8 x86-avx2 (converted now)"
    print(
        "note: STAND-IN MODEL: MobileNetV2 width 0.5 at 256 px + SSD head + TFLite_Detection_PostProcess,"
    )
    print("      int8, random weights (the reference detector is not available)")
    return build_stand_in(work), "stand-in MobileNetV2-SSD (random weights)"


def _postprocess_stub(tf: Any, anchors: int) -> Any:
    attrs = {
        "max_detections": "i: 20", "max_classes_per_detection": "i: 1", "detections_per_class": "i: 100",
        "use_regular_nms": "b: false", "nms_score_threshold": "f: 0.3", "nms_iou_threshold": "f: 0.5",
        "y_scale": "f: 10.0", "x_scale": "f: 10.0", "h_scale": "f: 5.0", "w_scale": "f: 5.0",
        "num_classes": f"i: {CLASSES}",
    }  # fmt: skip
    implements = 'name: "TFLite_Detection_PostProcess"' + "".join(
        f' attr {{ key: "{k}" value {{ {v} }} }}' for k, v in attrs.items()
    )

    @tf.function(experimental_implements=implements)
    def postprocess(box_encodings: Any, class_predictions: Any, anchor_tensor: Any) -> Any:
        zero = tf.constant(0.0, dtype=tf.float32)
        return zero, zero, zero, zero

    return postprocess


def build_stand_in(work: Path) -> Path:
    """MobileNetV2 (width 0.5, 256 px) + SSD head on two maps + TFLite_Detection_PostProcess, int8."""
    import keras
    import tensorflow as tf

    from agent.geometry.anchors import grid_anchors

    grid = {"feature_maps": [16, 8], "scales": [0.2, 0.5], "aspect_ratios": [1.0, 2.0, 0.5]}
    anchors = grid_anchors(grid)
    backbone = keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=0.5, include_top=False, weights=None
    )
    maps = [
        backbone.get_layer("block_13_expand_relu").output,
        backbone.get_layer("out_relu").output,
    ]
    boxes, scores = [], []
    for fmap in maps:
        x = keras.layers.SeparableConv2D(128, 3, padding="same", activation="relu6")(fmap)
        b = keras.layers.Conv2D(
            3 * 4, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01)
        )(x)
        c = keras.layers.Conv2D(
            3 * (CLASSES + 1), 1, bias_initializer=keras.initializers.Constant(-4.0)
        )(x)
        boxes.append(keras.layers.Reshape((-1, 4))(b))
        scores.append(keras.layers.Reshape((-1, CLASSES + 1))(c))
    heads = keras.Model(
        backbone.input,
        [
            keras.layers.Concatenate(axis=1)(boxes),
            keras.layers.Activation("sigmoid")(keras.layers.Concatenate(axis=1)(scores)),
        ],
    )
    post = _postprocess_stub(tf, len(anchors))
    anchor_tensor = tf.constant(anchors)

    def serve(x: Any) -> Any:
        enc, cls = heads(x)
        return post(enc, cls, anchor_tensor)

    saved = work / "saved"
    archive = keras.export.ExportArchive()
    archive.track(heads)
    archive.add_endpoint(
        name="serve", fn=serve, input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)]
    )
    archive.write_out(str(saved), verbose=False)

    def calibration() -> Any:
        rng = np.random.default_rng(0)
        for _ in range(16):
            yield [rng.random((1, SIZE, SIZE, 3), dtype=np.float32) * 2 - 1]

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = calibration
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.allow_custom_ops = True
    content = bytes(conv.convert())

    model = open_model(content)
    inp = model.inputs[0]
    roles = {
        ":0": OutputRole.BOXES,
        ":1": OutputRole.CLASSES,
        ":2": OutputRole.SCORES,
        ":3": OutputRole.COUNT,
    }
    outputs = [
        OutputSpec(
            name=o.name,
            index=o.index,
            role=roles[o.name[o.name.rindex(":") :]],
            shape=list(o.shape),
            dtype=o.dtype.name,
        )
        for o in model.outputs
    ]
    manifest = Manifest(
        name="standin-mobilenetv2-ssd", version=1, profile="x86-avx2",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), task="detection",
        decoder=Decoder.SSD_POSTPROCESS,
        model=ModelFile(sha256=hashlib.sha256(content).hexdigest(), size=len(content)),
        input=InputSpec(name=inp.name, shape=list(inp.shape), dtype=inp.dtype.name, scale=inp.scale,
                        zero_point=inp.zero_point, mean=[127.5], std=[127.5]),
        outputs=outputs, labels=[str(i) for i in range(CLASSES)],
    )  # fmt: skip
    manifest = manifest.model_copy(update={"golden": record_golden(model, manifest)})
    return write_bundle(work / "standin-bundle", content, manifest).path


def start_agent(
    bundle: Path,
    video: Path,
    rate: str,
    threads: int | None,
    broker: str | None,
    pin: bool = False,
    amx: str = "auto",
    prewarm_ms: float | None = None,
    fold_bgr: bool = True,
) -> Agent:
    overrides: dict[str, Any] = {
        "bundle.path": str(bundle), "source.uri": str(video), "source.rate": rate, "source.loop": True,
        "outputs.jsonl": os.devnull, "detection.score_threshold": 0.3, "runtime.amx": amx,
        "runtime.fold_bgr": fold_bgr,
    }  # fmt: skip
    if threads:
        overrides["runtime.threads"] = threads
    if pin:
        overrides["runtime.pin_threads"] = True
    if prewarm_ms is not None:
        overrides["pipeline.prewarm_ms"] = prewarm_ms
    if broker:
        overrides["mqtt.broker"] = broker
        overrides["device_id"] = f"bench-{rate}"
    agent = Agent(load_config(None, overrides))
    agent.start()
    return agent


def bare_invokes(interp: Any, count: int, period: float = 0.0) -> list[float]:
    """Bare interpreter.invoke() times; with a period, paced like frames from a camera."""
    times = []
    for _ in range(count):
        t = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t)
        if period:
            time.sleep(max(0.0, period - (time.perf_counter() - t)))
    return times


def paced_block(agent: Agent, frames: int) -> list[float]:
    """Frame latencies (s) of one camera-paced block of the agent, its clip's pacing restarted."""
    assert agent.pipeline is not None and agent.sources.grabber is not None
    agent.grabber.restart_pacing()
    before = len(agent.pipeline.stats.stages["total"])
    agent.pipeline.run(agent.stop_event, max_frames=frames)
    return list(agent.pipeline.stats.stages["total"])[before:]


def lockstep_block(agent: Agent, frames: int) -> float:
    """Seconds per frame of one lockstep block of the agent."""
    assert agent.pipeline is not None
    t0 = time.perf_counter()
    n = agent.pipeline.run(agent.stop_event, max_frames=frames)
    return (time.perf_counter() - t0) / max(n, 1)


def measure(
    bundle: Path,
    video: Path,
    rounds: int,
    frames: int,
    threads: int | None,
    broker: str | None,
    pin: bool = False,
    amx: str = "auto",
    prewarm_ms: float | None = None,
    fold_bgr: bool = True,
) -> dict[str, Any]:
    """Rounds of: paced agent | paced bare invokes; warm-up, then lockstep agent and bare ABBA."""
    # latency: frames arrive like a camera's; throughput: every frame, as fast as it goes
    paced = start_agent(bundle, video, "native", threads, broker, pin, amx, prewarm_ms, fold_bgr)
    flat = start_agent(bundle, video, "all", threads, broker, pin, amx, prewarm_ms, fold_bgr)
    assert paced.pipeline is not None and flat.pipeline is not None and flat.model is not None
    assert paced.grabber is not None
    fps_src = paced.grabber.source.fps or 30.0
    interp = flat.model._interp
    latency: list[float] = []
    bare_paced: list[float] = []
    bare: list[float] = []
    periods: list[float] = []
    warm = max(frames // 4, 5)
    period = 1.0 / fps_src
    try:
        for r in range(rounds + 1):  # round 0 warms up and is discarded
            bare_invokes(interp, warm, period)  # settle from the busy phase into camera pace
            lat = paced_block(paced, frames)
            bp = bare_invokes(interp, frames, period) + bare_invokes(interp, frames, period)
            lat += paced_block(paced, frames)
            lockstep_block(flat, warm)  # the CPU is cold after the paced phase: warm both up
            bare_invokes(interp, warm)
            p1 = lockstep_block(flat, frames)
            b = bare_invokes(interp, frames) + bare_invokes(interp, frames)
            p2 = lockstep_block(flat, frames)
            if r:
                latency += lat
                bare_paced += bp
                bare += b
                periods += [p1, p2]
        stats = paced.pipeline.stats
        stage_ms = {
            s: stats.median_ms(s) for s in ("grab", "pre", "wait", "invoke", "post", "publish")
        }
        flat_stage_ms = {
            s: flat.pipeline.stats.median_ms(s) for s in ("pre", "wait", "invoke", "post")
        }
    finally:
        paced.close()
        flat.close()
    return {
        "backend": f"{flat.model.backend} {flat.model.backend_version}",
        "source_fps": fps_src,
        "latency_ms": float(np.median(latency)) * 1000,
        "bare_paced_ms": float(np.median(bare_paced)) * 1000,
        "bare_ms": float(np.median(bare)) * 1000,
        "fps": 1.0 / float(np.median(periods)),
        "frames": (len(latency), len(periods) * frames),
        "dropped": paced.grabber.stats.dropped,
        "stage_ms": stage_ms,
        "flat_stage_ms": flat_stage_ms,
        "threads": flat.threads,
        "pinned": flat.pinning is not None,
        "inline": paced.grabber.stats.inline,
        "prewarms": stats.prewarms,
        "prewarm_ms": stats.median_prewarm_ms(),
        "color_swap": flat.color_swap,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--bundle",
        type=Path,
        help="Bundle to serve (default: the reference detector, else a stand-in).",
    )
    ap.add_argument(
        "--video",
        type=Path,
        help="Video file (default: test-split clips at the model's input size and at 640x480).",
    )
    ap.add_argument("--rounds", type=int, default=12, help="Interleaved rounds.")
    ap.add_argument("--frames", type=int, default=40, help="Frames per round, paced and lockstep.")
    ap.add_argument(
        "--threads", type=int, help="Interpreter threads (default: the bundle profile's)."
    )
    ap.add_argument("--broker", help="Also publish every result to this MQTT broker.")
    ap.add_argument(
        "--no-fold-bgr",
        dest="fold_bgr",
        action="store_false",
        help="runtime.fold_bgr off: swap an RGB model's frame channels every frame.",
    )
    ap.add_argument(
        "--pin-threads",
        action="store_true",
        help="runtime.pin_threads: inference and interpreter threads on their own cores.",
    )
    ap.add_argument(
        "--amx", choices=["auto", "use", "withhold"], default="auto",
        help="runtime.amx of the agents (Intel AMX for int8 kernels); the bare invokes share it.",
    )  # fmt: skip
    ap.add_argument(
        "--prewarm-ms", type=float,
        help="pipeline.prewarm_ms of the agents (0: off; default: the config's).",
    )  # fmt: skip
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="edgegap-bench-") as tmp:
        work = Path(tmp)
        bundle, what = bundle_to_serve(args.bundle, work)
        if args.video:
            videos = [(f"{args.video.name}", args.video)]
        else:
            videos = [
                (f"{w}x{h}", render_video(work / f"clip{w}x{h}.avi", (w, h)))
                for w, h in ((model_size(), model_size()), (640, 480))
            ]
        for label, video in videos:
            results.append(
                (
                    label,
                    measure(
                        bundle,
                        video,
                        args.rounds,
                        args.frames,
                        args.threads,
                        args.broker,
                        args.pin_threads,
                        args.amx,
                        args.prewarm_ms,
                        args.fold_bgr,
                    ),
                )
            )
    r0 = results[0][1]
    print(f"model: {what}; backend {r0['backend']}, {r0['threads']} interpreter thread(s){' pinned' if r0['pinned'] else ''}, {amx_label()}; "
          f"color swap: {r0['color_swap']}; results to {'MQTT ' + args.broker + ' and ' if args.broker else ''}JSONL")  # fmt: skip
    for label, r in results:
        paced_n, flat_n = r["frames"]
        print(f"[source {label}] frames: {paced_n} camera-paced at {r['source_fps']:.0f} fps "
              f"({r['inline']} read inline, {r['dropped']} dropped), {flat_n} lockstep in blocks of {args.frames}; medians over all rounds")  # fmt: skip
        stages = "  ".join(f"{k} {v:.3f}" for k, v in r["stage_ms"].items() if v is not None)
        print(f"[source {label}] camera-paced stage medians (ms): {stages}")
        if r["prewarms"]:
            print(f"[source {label}] camera-paced prewarm (off the frame path): {r['prewarms']} passes, "
                  f"median {r['prewarm_ms']:.3f} ms")  # fmt: skip
        stages = "  ".join(f"{k} {v:.3f}" for k, v in r["flat_stage_ms"].items() if v is not None)
        print(f"[source {label}] lockstep stage medians (ms): {stages}")
    for label, r in results:
        ideal = 1000.0 / r["bare_ms"]
        print(
            f"[source {label}] fps ratio (agent fps / (1000 / invoke-ms), goal >= 0.9): "
            f"{r['fps'] / ideal:.3f}  (agent {r['fps']:.1f} fps; bare invoke back to back "
            f"{r['bare_ms']:.3f} ms = {ideal:.1f} fps)"
        )
        print(
            f"[source {label}] latency ratio (agent frame latency / bare invoke, goal <= 1.15): "
            f"{r['latency_ms'] / r['bare_paced_ms']:.3f}  (capture->published "
            f"{r['latency_ms']:.3f} ms; bare invoke at the same pace {r['bare_paced_ms']:.3f} ms)"
        )


if __name__ == "__main__":
    main()
