"""Activation ranges that minimize each tensor's int8 error, in place of the calibrated min and max.

TFLite's calibration records, for every activation tensor, the smallest and largest value seen on
the calibration data, and the int8 scale spans that whole range: a few outliers widen the step for
every other value. Here the calibrated (still float) model is run again on the same calibration
data, every recorded tensor's values are gathered in a histogram over its recorded range, and the
range is replaced by the one that minimizes the expected squared error of the tensor's int8 values:
rounding (a step squared over 12) inside the range, the distance to the nearest end outside it.
The ends are searched on a grid of fractions of the recorded ones, so a range only ever narrows
and always keeps zero. Weights are untouched; the model's inputs keep their ranges (they carry the
input quantization, converter.pixel_input) and so do its outputs (a clipped output would saturate
where the float model's does not); the quantizer still fixes the ranges of ops that define their
own (softmax, logistic).

Each tensor's least error is not always the model's: clipping errs the same way on every value it
clips, and the next layer adds those errors up, where rounding errors partly cancel. So both int8
models are made and run on the calibration data, and the refined ranges are kept only when the
model's outputs are closer to the float model's (relative squared error) than with min/max.
Single-input models only; a model the host interpreter cannot run keeps its min/max ranges.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from converter.data import Dataset

logger = logging.getLogger(__name__)

BINS = 2048
FRACTIONS = np.linspace(0.1, 1.0, 46)  # the ends tried, as fractions of the recorded ones
DEFAULT_SAMPLES = 200  # as many as calibration sees (converter.quantize)
MODES = ("mse", "minmax")


@dataclass(frozen=True)
class RangeReport:
    """What refining did: tensors seen, tensors narrowed, the median width kept, and the int8
    model's output error with min/max and with refined ranges (which one was kept)."""

    tensors: int
    narrowed: int
    median_width: float  # refined width over recorded width, over the narrowed tensors
    minmax_error: float = float("nan")  # relative squared output error on the calibration data
    refined_error: float = float("nan")

    @property
    def kept(self) -> bool:
        return self.refined_error < self.minmax_error

    def record(self) -> dict[str, object]:
        return {
            "method": "mse" if self.kept else "minmax",
            "tensors": self.tensors,
            "narrowed": self.narrowed,
            "median_width": round(self.median_width, 4),
            "output_error": {
                "minmax": round(self.minmax_error, 6),
                "mse": round(self.refined_error, 6),
            },
        }


def best_range(hist: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The range within [lo, hi] (widened to hold zero) whose int8 values err least on `hist`,
    a histogram of BINS equal bins over [lo, hi]."""
    low, high = min(lo, 0.0), max(hi, 0.0)
    centers = lo + (np.arange(len(hist)) + 0.5) * (hi - lo) / len(hist)
    ups = high * FRACTIONS if high > 0 else np.array([high])
    downs = low * FRACTIONS if low < 0 else np.array([low])
    best = (np.inf, low, high)
    for down in downs:
        inside = np.clip(centers[None, :], down, ups[:, None])  # [ups, bins]
        step2 = ((ups - down) / 255.0) ** 2 / 12.0
        err = (hist * ((centers - inside) ** 2 + step2[:, None] * (centers == inside))).sum(1)
        i = int(np.argmin(err))
        if err[i] < best[0]:
            best = (float(err[i]), float(down), float(ups[i]))
    return best[1], best[2]


def _recorded(model: object) -> dict[int, tuple[float, float]]:
    """Activation tensors with a recorded per-tensor range, the model's inputs and outputs excluded."""
    sg = model.subgraphs[0]  # type: ignore[attr-defined]
    ends = {int(i) for i in sg.inputs} | {int(i) for i in sg.outputs}
    out: dict[int, tuple[float, float]] = {}
    for i, t in enumerate(sg.tensors):
        q = t.quantization
        if i in ends or q is None or q.min is None or len(q.min) != 1 or q.max is None:
            continue
        lo, hi = float(q.min[0]), float(q.max[0])
        if hi > lo:
            out[i] = (lo, hi)
    return out


def _histograms(
    calibrated: bytes, ranges: dict[int, tuple[float, float]], x: np.ndarray
) -> dict[int, np.ndarray]:
    """Each tensor's values on every sample, counted in BINS bins over its recorded range."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # keeping every tensor is what this pass is for
        warnings.simplefilter("ignore")
        interp = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    hists = {i: np.zeros(BINS) for i in ranges}
    for sample in x:
        interp.set_tensor(inp["index"], sample[np.newaxis].astype(inp["dtype"]))
        interp.invoke()
        for i, (lo, hi) in ranges.items():
            v = np.clip(interp.get_tensor(i).ravel(), lo, hi)
            hists[i] += np.histogram(v, bins=BINS, range=(lo, hi))[0]
    return hists


def refine_ranges(
    calibrated: bytes, data: Dataset, samples: int = DEFAULT_SAMPLES
) -> tuple[bytes, RangeReport | None]:
    """The calibrated model with each activation's range replaced by its least-error one (see
    the module's docstring); unchanged, with no report, when the model cannot be run here."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    if len(model.subgraphs[0].inputs) != 1 or len(data.x) == 0:
        return calibrated, None
    ranges = _recorded(model)
    try:
        hists = _histograms(calibrated, ranges, data.x[:samples])
    except Exception as exc:  # e.g. a custom op the host interpreter lacks
        logger.info("activation ranges left as min/max: %s", exc)
        return calibrated, None
    widths = []
    tensors = model.subgraphs[0].tensors
    for i, (lo, hi) in ranges.items():
        if hists[i].sum() == 0:
            continue
        low, high = best_range(hists[i], lo, hi)
        if (low, high) != (min(lo, 0.0), max(hi, 0.0)):
            widths.append((high - low) / (max(hi, 0.0) - min(lo, 0.0)))
            tensors[i].quantization.min = np.array([low], np.float32)
            tensors[i].quantization.max = np.array([high], np.float32)
    report = RangeReport(len(ranges), len(widths), float(np.median(widths)) if widths else 1.0)
    logger.info("activation ranges: %d of %d narrowed", report.narrowed, report.tensors)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), report


def outputs(model: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """The model's (dequantized) outputs on every sample of x, by signature name."""
    from agent.runtime import open_model
    from converter.graph import read_graph
    from converter.tasks.tensor import run_model

    loaded, names = open_model(model), read_graph(model).output_names
    got = run_model(loaded, x)
    return {names.get(o.index, o.name): v for o, v in zip(loaded.outputs, got, strict=True)}


def output_error(model: bytes, reference: dict[str, np.ndarray], x: np.ndarray) -> float:
    """Squared error of the model's outputs against `reference` (the float model's), over the
    reference's squared size; summed over outputs."""
    got = {k: v.astype(np.float64) for k, v in outputs(model, x).items()}
    ref = {k: v.astype(np.float64) for k, v in reference.items()}
    err = sum(float(np.sum((got[k].reshape(r.shape) - r) ** 2)) for k, r in ref.items())
    return err / max(sum(float(np.sum(r**2)) for r in ref.values()), 1e-12)


def choose_ranges(
    calibrated: bytes,
    data: Dataset,
    quantize: Callable[[bytes], bytes],
    samples: int = DEFAULT_SAMPLES,
) -> tuple[bytes, bytes, RangeReport | None]:
    """The int8 model (by `quantize`) and the calibrated model it came from: with refined ranges
    when its outputs on the calibration data are closer to float's, else with min/max ones."""
    refined, report = refine_ranges(calibrated, data, samples)
    plain = quantize(calibrated)
    if report is None or report.narrowed == 0:
        return plain, calibrated, report
    better = quantize(refined)
    x = data.x[:samples]
    reference = outputs(calibrated, x)
    report = dataclasses.replace(
        report,
        minmax_error=output_error(plain, reference, x),
        refined_error=output_error(better, reference, x),
    )
    logger.info(
        "int8 output error on calibration data: min/max ranges %.3g, refined %.3g",
        report.minmax_error,
        report.refined_error,
    )
    return (better, refined, report) if report.kept else (plain, calibrated, report)
