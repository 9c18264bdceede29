"""The conversion's stages, each a small function over one ConvertState.

`start` derives what the options ask for (name, version, output, signing key) into a new state;
then load, calibrate, prune, quantize, evaluate, condition, fallback, gate, golden, report, sign and write
each fill in their part of it, in that order (converter.pipeline.STAGE_FUNCTIONS; golden to write
are in converter.finish). The options are only read. The converted model is opened once (again only if the fallback replaces it), and
that one interpreter serves the accuracy measurement, the manifest and the golden check.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.manifest import ColorOrder, Manifest
from agent.bundle.signing import load_private_key
from agent.runtime import LoadedModel
from converter.activation_ranges import RangeReport
from converter.conditioning import Conditioning, Quantized, condition
from converter.data import Dataset, Normalization
from converter.fallback_cost import Budget, CostAwareResult, find_float_layers_within_budget, head
from converter.gates import (
    GateResult,
    LatencyStats,
    Measured,
    host_threads,
    measure_latency,
    select_gates,
    withholds_amx,
)
from converter.graph import ModelGraph, read_graph
from converter.loading import SourceModel, describe, load_model, wrap_subclassed
from converter.manifest import (
    open_converted,
)
from converter.options import ConvertError, ConvertOptions, Reporter
from converter.output_order import reorder_outputs
from converter.pixel_input import (
    PixelFold,
    PixelFoldError,
    already_exact,
    fold_normalization,
    on_pixels,
    pixel_normalization,
    to_pixel_space,
)
from converter.prepare import (
    NAME_RE,
    MemoPredict,
    align_labels,
    dataset,
    default_name,
    fold_bgr,
    make_task,
    normalization,
    on_swapped,
    prune_source,
    read_labels,
    swap_channels,
    with_input_dtype,
)
from converter.quantize import convert_float, export_saved_model, quantize
from converter.result import ConvertResult, PruningSummary
from converter.tasks.base import AccuracyReport, Task
from firmware_profiles import Profile

logger = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], Any]


@dataclass(eq=False, repr=False)
class ConvertState:
    """Everything one conversion knows. The fields below `workdir` are set by the stage named
    beside them; reading one before its stage ran is an AttributeError, never a stale value."""

    opts: ConvertOptions
    reporter: Reporter
    name: str
    version: int
    output: Path
    signing_key: Ed25519PrivateKey | None
    workdir: Path  # a temporary directory for SavedModels, gone after the conversion
    timings: dict[str, float] = field(default_factory=dict)  # seconds per reporter stage label
    original: SourceModel = field(init=False)  # load: as loaded; accuracy is measured against it
    source: SourceModel = field(init=False)  # load, prune: what is converted (folded, pruned)
    task: Task = field(init=False)  # load
    norm: Normalization = field(init=False)  # load; calibrate swaps it for a folded model
    reference: Predict = field(
        init=False
    )  # load: the original float model on the converted one's inputs
    folded: list[str] = field(default_factory=list)  # load: layers --fold-bgr changed
    pixel_fold: PixelFold | None = None  # calibrate: the normalization folded into the model
    calibration: Dataset = field(init=False)  # calibrate
    validation: Dataset = field(init=False)  # calibrate
    labels: list[str] = field(default_factory=list)  # calibrate
    prune_report: Any = None  # prune: converter.pruning.api.PruneReport
    saved: Path = field(init=False)  # quantize: the SavedModel every TFLite model comes from
    float_bytes: bytes = field(init=False)  # quantize
    original_float_bytes: bytes = field(init=False)  # quantize: the unpruned float model
    model_bytes: bytes = field(init=False)  # quantize, fallback
    graph: ModelGraph = field(init=False)  # evaluate, fallback: model_bytes' graph
    quant: LoadedModel = field(init=False)  # evaluate, fallback: model_bytes opened
    accuracy: AccuracyReport = field(init=False)  # evaluate, fallback
    plain_accuracy: AccuracyReport = field(init=False)  # evaluate: before any float fallback
    int8_bytes: bytes = field(init=False)  # quantize: the pure int8 model, before any fallback
    calibrated: bytes | None = None  # quantize: the calibrated model with refined ranges
    ranges: RangeReport | None = None  # quantize: what refining the activation ranges did
    conditioning: Conditioning | None = None  # condition: equalization and bias correction
    fallback: CostAwareResult | None = None  # fallback
    latency: dict[str, LatencyStats] = field(init=False)  # gate
    gates: list[GateResult] = field(init=False)  # gate
    manifest: Manifest = field(init=False)  # golden, report, sign
    pruning: PruningSummary | None = None  # report
    result: ConvertResult = field(init=False)  # write
    _label: str | None = None
    _since: float = field(default_factory=time.perf_counter)

    @property
    def profile(self) -> Profile:
        return self.opts.profile

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def enter(self, label: str | None) -> None:
        """Tell the reporter; the time since the last label is that label's (None: the end)."""
        now = time.perf_counter()
        if self._label is not None:
            self.timings[self._label] = round(now - self._since, 3)
        self._label, self._since = label, now
        if label is not None:
            self.reporter.stage(label)

    def open_quant(self, model_bytes: bytes) -> None:
        """Make model_bytes the converted model, its outputs in the task's order: its graph read
        and the model opened, once."""
        order = self.task.output_order(model_bytes)
        if order is not None:
            model_bytes = reorder_outputs(model_bytes, order)
        self.model_bytes = model_bytes
        self.graph = read_graph(model_bytes)
        self.quant = open_converted(model_bytes, self.graph)


Stage = Callable[[ConvertState], None]


def start(opts: ConvertOptions, reporter: Reporter, workdir: Path) -> ConvertState:
    """A new state from the options, which are checked here before any model is touched."""
    name = opts.name or default_name(opts.model)
    if not NAME_RE.match(name):
        raise ConvertError(
            f"--name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    version = (
        opts.version
        if opts.version is not None
        else int(time.strftime("%Y%m%d%H%M%S", time.gmtime()))
    )
    if version < 0:
        raise ConvertError("--version must be 0 or more")
    if opts.sign_key is not None and not Path(opts.sign_key).is_file():
        raise ConvertError(f"signing key not found: {opts.sign_key}")
    signing_key = load_private_key(Path(opts.sign_key)) if opts.sign_key else None
    output = Path(opts.output)
    if output.exists() and not output.is_dir():
        raise ConvertError(f"--output {output} exists and is not a directory")
    if opts.input_dtype is not None:  # a copy of the options: the caller's are never changed
        opts = dataclasses.replace(
            opts, profile=with_input_dtype(opts.profile, opts.input_dtype), input_dtype=None
        )
    return ConvertState(opts, reporter, name, version, output, signing_key, workdir)


def load(s: ConvertState) -> None:
    """The source model, its task and normalization; with --fold-bgr, the model made to take BGR."""
    s.enter("load model")
    opts = s.opts
    if isinstance(opts.model, (str, Path)):
        s.original = load_model(opts.model, opts.custom_objects, opts.input_shape)
    elif opts.input_shape is not None:
        s.original = describe(wrap_subclassed(opts.model, opts.input_shape, "<in-memory>"))
    else:
        s.original = describe(opts.model)
    s.source = s.original
    s.task = make_task(opts.task, s.source)
    s.norm = normalization(opts, s.source.input_shape[-1], s.task)
    s.reference = s.original.predict  # gates measure against the original float model
    if opts.fold_bgr:
        s.enter("fold bgr")
        if s.norm.color_order is not ColorOrder.RGB:
            raise ConvertError(
                f"--fold-bgr makes a model that takes RGB take BGR; this one takes {s.norm.color_order.value}"
            )
        s.source, s.folded = fold_bgr(s.source)
        s.reference = functools.partial(on_swapped, s.original.predict)


def calibrate(s: ConvertState) -> None:
    """Calibration and validation data (read in the original model's color order), and the labels."""
    s.enter("load data")
    opts, source, norm = s.opts, s.source, s.norm
    s.calibration = dataset(
        opts.calibration, source, norm, opts.calibration_samples, "calibration data"
    )
    if s.task.name == "detection" and not isinstance(opts.validation, Dataset):
        s.validation = s.task.validation_data(opts.validation, opts.validation_samples)  # type: ignore[attr-defined]
    elif opts.validation is not None:
        s.validation = dataset(
            opts.validation, source, norm, opts.validation_samples, "validation data"
        )
    else:
        s.validation = s.calibration
        logger.warning("no --validation data: accuracy is measured on the calibration data")
    if s.folded:  # from here on, everything feeds the folded model
        s.norm = norm.swapped()
        swapped = swap_channels(s.calibration)
        s.validation = swapped if s.validation is s.calibration else swap_channels(s.validation)
        s.calibration = swapped
    s.labels = read_labels(opts.labels) or list(getattr(s.task, "labels", []))
    s.validation = align_labels(s.validation, s.labels)
    fold_input(s)
    s.reference = MemoPredict(s.reference)


def fold_input(s: ConvertState) -> None:
    """Pixel-exact input (converter.pixel_input): with --pixel-exact on, or auto where the
    normalization would leave the int8 input off the pixel grid and the model allows the fold."""
    mode, channels = s.opts.pixel_exact, s.source.input_shape[-1]
    integer_input = s.profile.quantization.input_dtype.value in ("int8", "uint8")
    if mode == "off" or not integer_input or (mode == "auto" and already_exact(s.norm, channels)):
        return
    try:
        if s.source.kind == "saved_model":
            raise PixelFoldError(
                "a SavedModel's weights cannot be edited; give the .keras or .h5 file"
            )
        model, s.pixel_fold = fold_normalization(s.source.model, s.norm)
    except PixelFoldError as exc:
        if mode == "on":
            raise ConvertError(f"--pixel-exact: {exc}") from exc
        logger.info("input left as normalized: %s", exc)
        return
    s.source = dataclasses.replace(s.source, model=model)
    s.reference = on_pixels(s.reference, s.norm)
    same = s.validation is s.calibration
    s.calibration = to_pixel_space(s.calibration, s.norm, pin_range=True)
    s.validation = s.calibration if same else to_pixel_space(s.validation, s.norm)
    s.norm = pixel_normalization(s.norm, channels)


def prune(s: ConvertState) -> None:
    """With --prune, the pruned model replaces the source for every later stage."""
    if not s.opts.prune:
        return
    s.enter("prune")
    s.source, s.prune_report = prune_source(s.opts, s.source, s.task, s.calibration, s.reporter)


def quantize_model(s: ConvertState) -> None:
    """The SavedModel, the float TFLite model, the model in the profile's scheme (and, when pruned,
    the original model's float TFLite model to compare against)."""
    s.saved = s.workdir / "saved_model"
    s.enter("export")
    export_saved_model(s.task, s.source.model, s.saved)
    s.enter("float model")
    s.float_bytes = convert_float(s.saved, s.task)
    s.enter("quantize")
    s.int8_bytes, s.calibrated, s.ranges = quantize(
        s.saved, s.profile, s.task, s.calibration, s.opts.activation_ranges
    )
    s.model_bytes = s.int8_bytes
    s.original_float_bytes = s.float_bytes
    if s.prune_report is not None:
        original_saved = s.workdir / "original_saved_model"
        export_saved_model(s.task, s.original.model, original_saved)
        s.original_float_bytes = convert_float(original_saved, s.task)


def evaluate(s: ConvertState) -> None:
    """Accuracy of the converted model against the original float model."""
    s.enter("evaluate")
    _open_int8(s, s.model_bytes)


def _open_int8(s: ConvertState, model_bytes: bytes) -> None:
    """model_bytes, the int8 model before any fallback, opened and measured against float."""
    s.open_quant(model_bytes)
    s.accuracy = s.plain_accuracy = s.task.accuracy(s.reference, s.quant, s.validation)


def condition_int8(s: ConvertState) -> None:
    """--conditioning (converter.conditioning): with auto, where pure int8 misses the accuracy
    gate (with on, always), the int8 model of the equalized and bias-corrected Keras model
    replaces it if it comes closer to float; the float fallback then starts from it."""
    mode, limit = s.opts.conditioning, s.profile.budgets.max_accuracy_drop
    if mode == "off" or (mode == "auto" and s.accuracy.drop <= limit):
        return
    if s.source.kind == "saved_model":
        return
    s.enter("condition")
    plain = Quantized(s.int8_bytes, s.calibrated, s.ranges, s.saved)
    kept, s.conditioning = condition(
        s.source.model, s.task, s.profile, s.calibration, s.float_bytes, plain, s.workdir,
        ranges=s.opts.activation_ranges,
    )  # fmt: skip
    if kept is plain:
        return
    s.int8_bytes, s.calibrated, s.ranges, s.saved = (
        kept.model,
        kept.calibrated,
        kept.ranges,
        kept.saved,
    )
    _open_int8(s, s.int8_bytes)
    s.reporter.detail(f"conditioned for int8: accuracy drop {s.accuracy.drop:.2%}")


SENSITIVITY_SAMPLES = 128  # validation samples each candidate's output divergence is measured on


def fallback(s: ConvertState) -> None:
    """Where the accuracy gate fails and the profile allows it (and --no-fallback is not given),
    the fewest layers kept in float that pass it within the fallback budget. When none does, the
    best in-budget model replaces the int8 one (the accuracy gate still fails)."""
    profile, limit = s.profile, s.profile.budgets.max_accuracy_drop
    if not (
        s.accuracy.drop > limit and s.opts.fallback and profile.quantization.allow_float_fallback
    ):
        return
    s.enter("fallback")
    rep, task, reference, validation = s.reporter, s.task, s.reference, s.validation
    budget = Budget.of(profile, s.opts.fallback_budget)
    rep.detail(
        f"accuracy drop {s.accuracy.drop:.2%} > {limit:.2%}: ranking layers to keep in float "
        f"({budget.describe()})"
    )
    probe = head(validation, SENSITIVITY_SAMPLES)
    s.fallback = find_float_layers_within_budget(
        s.saved,
        profile,
        task,
        s.calibration,
        s.float_bytes,
        s.int8_bytes,
        s.plain_accuracy,
        budget,
        evaluate=lambda b: task.accuracy(reference, open_converted(b), validation),
        divergence=lambda b: task.divergence(reference, open_converted(b), probe),
        on_attempt=lambda n: rep.detail(f"fallback: trying {n} float layer(s)"),
        calibrated=s.calibrated,
    )
    if s.fallback.model is not None and s.fallback.accuracy is not None:
        s.open_quant(s.fallback.model)
        s.accuracy = s.fallback.accuracy


def gate(s: ConvertState) -> None:
    """Latency of the float and converted models, timed interleaved; then every gate the profile selects."""
    s.enter("gates")
    profile = s.profile
    timed = {"float": s.float_bytes, "quant": s.model_bytes}
    if s.model_bytes is not s.int8_bytes:
        timed["int8"] = s.int8_bytes  # the pure int8 model, for the fallback's latency over it
    if s.prune_report is not None:
        timed["original"] = s.original_float_bytes
    s.latency = measure_latency(
        timed,
        threads=host_threads(profile.runtime.threads),
        runs=s.opts.latency_runs,
        withhold_amx=withholds_amx(profile),
    )
    measured = Measured(
        graph=s.graph, size=len(s.model_bytes), accuracy=s.accuracy, latency=s.latency["quant"]
    )
    s.gates = [g.check(measured) for g in select_gates(profile)]
