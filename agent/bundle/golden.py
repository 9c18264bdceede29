"""Golden check: deterministic inputs and expected outputs, recorded at conversion, re-run on the device.

Inputs are pixels drawn from SHA-256 in counter mode (seed, input number, block number), so any
runtime on any platform regenerates them byte for byte, then normalized as the manifest says.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from agent.bundle.manifest import Decoder, Golden, Manifest, OutputRole
from agent.preprocess import Normalizer, dequantize
from agent.runtime import LoadedModel

logger = logging.getLogger(__name__)


def golden_pixels(seed: int, number: int, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 pixels of the given HxWxC shape, from SHA-256(seed, number, block)."""
    need = int(np.prod(shape))
    out = bytearray()
    block = 0
    prefix = f"edgegap-golden:{seed}:{number}:".encode()
    while len(out) < need:
        out += hashlib.sha256(prefix + str(block).encode()).digest()
        block += 1
    return np.frombuffer(bytes(out[:need]), dtype=np.uint8).reshape(shape)


def golden_inputs(manifest: Manifest, seed: int, count: int) -> list[np.ndarray]:
    norm = Normalizer.from_spec(manifest.input)
    hwc = tuple(manifest.input.shape[1:])
    return [norm(golden_pixels(seed, i, hwc)) for i in range(count)]


def golden_stride(manifest: Manifest) -> int:
    """manifest.extra.golden_stride: every k-th value of each output is recorded and compared,
    so a model with large outputs (a YOLO head) keeps its manifest small. Default 1: all."""
    k = manifest.extra.get("golden_stride", 1)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1 << 30:
        raise ValueError(f"golden_stride must be a whole number from 1 to 2^30, got {k!r}")
    return k


def _outputs(model: LoadedModel, manifest: Manifest, x: np.ndarray) -> list[np.ndarray]:
    model.set_input(x)
    model.invoke()
    outs = [dequantize(model.get(o.index), o.scale, o.zero_point) for o in manifest.outputs]
    outs = _mask_unused_rows(manifest, outs)
    k = golden_stride(manifest)
    return outs if k == 1 else [o.ravel()[::k] for o in outs]


def _mask_unused_rows(manifest: Manifest, outs: list[np.ndarray]) -> list[np.ndarray]:
    """TFLite_Detection_PostProcess leaves rows past `count` uninitialized: zero them on both sides."""
    if manifest.decoder is not Decoder.SSD_POSTPROCESS:
        return outs
    roles = [o.role for o in manifest.outputs]
    if OutputRole.COUNT not in roles:
        return outs
    count = outs[roles.index(OutputRole.COUNT)].ravel()
    n = int(count[0]) if count.size and np.isfinite(count[0]) else 0
    for j, role in enumerate(roles):
        if role in (OutputRole.BOXES, OutputRole.CLASSES, OutputRole.SCORES) and outs[j].ndim >= 2:
            outs[j] = outs[j].copy()
            outs[j][:, max(n, 0) :] = 0.0
    return outs


def record_golden(model: LoadedModel, manifest: Manifest, seed: int = 0, count: int = 3) -> Golden:
    """Run the model on the golden inputs and record outputs, with a tolerance of a few steps."""
    expected: list[list[str]] = []
    for x in golden_inputs(manifest, seed, count):
        outs = _outputs(model, manifest, x)
        expected.append([base64.b64encode(o.astype("<f4").tobytes()).decode() for o in outs])
    atol = [max(o.scale * 2.0, 1e-3) if o.scale > 0 else 1e-3 for o in manifest.outputs]
    return Golden(seed=seed, count=count, expected=expected, atol=atol)


@dataclass
class GoldenResult:
    passed: bool
    max_error: list[float]
    reason: str = ""


def check_golden(model: LoadedModel, manifest: Manifest) -> GoldenResult:
    """Re-run the golden inputs; every output must match within its tolerance."""
    g = manifest.golden
    if g is None:
        return GoldenResult(False, [], "manifest has no golden check")
    if len(g.expected) != g.count or len(g.atol) != len(manifest.outputs):
        return GoldenResult(False, [], "golden check does not match the manifest's outputs")
    if not all(np.isfinite(t) and t >= 0 for t in g.atol):
        return GoldenResult(False, [], f"golden tolerance {g.atol} is not finite and non-negative")
    try:
        golden_stride(manifest)
    except ValueError as exc:
        return GoldenResult(False, [], str(exc))
    worst = [0.0] * len(manifest.outputs)
    for i, x in enumerate(golden_inputs(manifest, g.seed, g.count)):
        got = _outputs(model, manifest, x)
        for j, value in enumerate(got):
            if not np.isfinite(value).all():  # whatever was recorded: NaN or inf never passes
                name = manifest.outputs[j].name
                return GoldenResult(False, worst, f"output {name!r} is not finite (NaN or inf)")
        for j, (value, enc) in enumerate(zip(got, g.expected[i], strict=True)):
            want = np.frombuffer(base64.b64decode(enc), dtype="<f4")
            if want.size != value.size:
                return GoldenResult(
                    False, worst, f"output {j} has {value.size} values, golden has {want.size}"
                )
            with np.errstate(invalid="ignore", over="ignore"):
                err = float(np.max(np.abs(value.ravel() - want))) if want.size else 0.0
            worst[j] = max(worst[j], err if np.isfinite(err) else float("inf"))  # NaN never passes
    bad = [j for j, e in enumerate(worst) if e > g.atol[j]]
    if bad:
        j = bad[0]
        name = manifest.outputs[j].name
        return GoldenResult(
            False, worst, f"output {name!r} differs by {worst[j]:.4g} > tolerance {g.atol[j]:.4g}"
        )
    return GoldenResult(True, worst)
