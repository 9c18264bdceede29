"""The conversion pipeline: model and data in, a checked (and optionally signed) bundle out.

Stages: load the model and data, export a SavedModel, convert to float and to the profile's
scheme, score accuracy against float, fall back to float layers if the profile allows and the gate
needs it, check every gate, then write model.tflite, manifest.json and report.json.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle.golden import record_golden
from agent.bundle.loading import write_bundle
from agent.bundle.manifest import ColorOrder, InputSpec, Manifest, ModelFile, OutputSpec, ResizeMode
from agent.bundle.signing import load_private_key, sign_manifest
from agent.errors import EdgegapError
from agent.runtime import LoadedModel, open_model
from converter.data import Dataset, Normalization, default_color_order, load_data
from converter.fallback import FallbackResult, find_float_layers
from converter.gates import (
    LatencyStats,
    ModelGraph,
    check_accuracy,
    check_arena,
    check_latency,
    check_ops,
    check_size,
    first_failure,
    host_arch,
    host_threads,
    latency_label,
    measure_latency,
    read_graph,
    verdict,
    withholds_amx,
)
from converter.loading import SourceModel, describe, load_model, quiet_native_stderr
from converter.quantize import convert_float, export_saved_model, quantize
from converter.result import ConvertResult, PruningSummary
from converter.tasks import TASK_NAMES
from converter.tasks.base import AccuracyReport, Task
from firmware_profiles import Profile, QuantScheme

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConvertError(EdgegapError, ValueError):
    """A conversion that cannot go on: bad options, labels that do not fit, an unusable task."""


class Reporter:
    """Receives stage changes; the CLI shows them as a rich progress bar. The default is silent."""

    def stage(self, name: str) -> None:
        logger.info("stage: %s", name)

    def detail(self, text: str) -> None:
        logger.debug("%s", text)


STAGES = ("load model", "fold bgr", "load data", "prune", "export", "float model", "quantize", "evaluate", "fallback", "gates",
          "manifest", "write")  # fmt: skip


@dataclass
class ConvertOptions:
    model: str | Path | Any  # a path, or a keras.Model
    profile: Profile
    calibration: str | Path | Dataset
    output: Path
    validation: str | Path | Dataset | None = None
    mean: list[float] | None = None  # default: 0, or what the model records (a detector's sidecar)
    std: list[float] | None = None  # default: 255, or what the model records
    color_order: ColorOrder | None = None  # default: gray for 1 channel, else rgb; or what the model records
    resize: ResizeMode = ResizeMode.STRETCH
    labels: list[str] | str | Path | None = None
    name: str | None = None
    version: int | None = None  # default: UTC time as YYYYMMDDHHMMSS, so it grows
    task: str | Task = "auto"
    sign_key: Path | None = None
    force: bool = False
    fallback: bool = True  # use the profile's float fallback when it allows one
    calibration_samples: int = 200
    validation_samples: int = 1000
    latency_runs: int = 50
    custom_objects: Sequence[str | Path] = ()
    golden_count: int = 3
    prune: bool = False  # apply the profile's pruning target before quantizing
    prune_epochs: int = 0  # distillation fine-tuning on the calibration data after pruning
    prune_steps: int = 1
    prune_importance: str = "l1"
    protect: Sequence[str] = ()  # layer names never pruned (the task adds its own)
    fold_bgr: bool = False  # fold the BGR-to-RGB swap into the model (converter.color_fold)


def default_name(model: Any) -> str:
    stem = Path(model).stem if isinstance(model, (str, Path)) else str(getattr(model, "name", "model"))
    name = re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip("-._") or "model"
    return name[:64]


def read_labels(labels: list[str] | str | Path | None) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, list):
        return [str(x) for x in labels]
    path = Path(labels)
    if not path.is_file():
        raise ConvertError(f"labels file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_task(task: str | Task, source: SourceModel) -> Task:
    """A task adapter by name; 'auto' picks classification for one [batch, classes] output."""
    from converter.tasks.classification import ClassificationTask, looks_like_classifier
    from converter.tasks.tensor import TensorTask

    if isinstance(task, Task):
        if hasattr(task, "source") and getattr(task, "source", None) is None:
            task.source = source  # type: ignore[attr-defined]
        return task
    from converter.tasks.detection import DetectionTask

    if task == "auto" and DetectionTask.applies_to(source.source):
        task = "detection"
        logger.info("task: detection (auto: detector sidecar found)")
    if task == "auto":
        probe = source.predict(np.zeros((1, *source.input_shape), np.float32))
        task = "classification" if looks_like_classifier(source, probe) else "tensor"
        logger.info("task: %s (auto)", task)
    if task == "classification":
        return ClassificationTask(source)
    if task == "tensor":
        return TensorTask(source)
    if task == "detection":
        return DetectionTask(source=source)
    raise ConvertError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}")


def open_converted(model_bytes: bytes, graph: ModelGraph | None = None, threads: int = 1) -> LoadedModel:
    """Open a converted model; tensors carry their signature names, so outputs pair up by name."""
    graph = graph or read_graph(model_bytes)
    model = open_model(model_bytes, threads)
    model.inputs = [dataclasses.replace(t, name=graph.input_names.get(t.index, t.name)) for t in model.inputs]
    model.outputs = [dataclasses.replace(t, name=graph.output_names.get(t.index, t.name)) for t in model.outputs]
    return model


def _dataset(src: str | Path | Dataset, source: SourceModel, norm: Normalization, limit: int, what: str) -> Dataset:
    if isinstance(src, Dataset):
        if tuple(src.x.shape[1:]) != source.input_shape:
            raise ConvertError(f"{what} has samples of shape {tuple(src.x.shape[1:])}; the model takes {source.input_shape}")
        return src
    return load_data(src, source.input_shape, norm, limit=limit, what=what)


def _golden_tolerance(manifest: Manifest, golden: Any) -> Any:
    """Float outputs get 2% of their golden range: kernels on other CPUs round differently."""
    import base64

    atol = list(golden.atol)
    for j, out in enumerate(manifest.outputs):
        if out.scale > 0:
            continue
        values = np.concatenate([np.frombuffer(base64.b64decode(e[j]), "<f4") for e in golden.expected])
        span = float(values.max() - values.min()) if values.size else 0.0
        atol[j] = max(atol[j], 0.02 * span)
    return golden.model_copy(update={"atol": atol})


def build_manifest(
    opts: ConvertOptions, source: SourceModel, task: Task, quant: LoadedModel, model_bytes: bytes,
    norm: Normalization, labels: list[str], name: str, version: int,
) -> Manifest:
    info = quant.inputs[0]
    roles = task.output_roles(quant.outputs)
    if len(roles) != len(quant.outputs):
        raise ConvertError(f"task {task.name} gave {len(roles)} roles for {len(quant.outputs)} outputs")
    import hashlib

    return Manifest(
        name=name,
        version=version,
        profile=opts.profile.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        task=task.name,
        decoder=task.decoder,
        model=ModelFile(sha256=hashlib.sha256(model_bytes).hexdigest(), size=len(model_bytes)),
        input=InputSpec(
            name=info.name,
            shape=list(info.shape),
            dtype=np.dtype(info.dtype).name,
            scale=info.scale,
            zero_point=info.zero_point,
            color_order=norm.color_order,
            resize=norm.resize,
            mean=list(norm.mean),
            std=list(norm.std),
        ),
        outputs=[
            OutputSpec(name=o.name, index=o.index, role=r, shape=list(o.shape), dtype=np.dtype(o.dtype).name,
                       scale=o.scale, zero_point=o.zero_point)
            for o, r in zip(quant.outputs, roles, strict=True)
        ],
        labels=labels,
        extra=task.manifest_extra(),
    )


def convert(opts: ConvertOptions, reporter: Reporter | None = None) -> ConvertResult:
    """Run every stage; gates that fail make result.passed False (the bundle is written only if forced)."""
    with quiet_native_stderr():
        return _convert(opts, reporter)


def _convert(opts: ConvertOptions, reporter: Reporter | None) -> ConvertResult:
    rep = reporter or Reporter()
    profile = opts.profile
    timings: dict[str, float] = {}
    current: list[Any] = [None, time.perf_counter()]

    def stage(label: str | None) -> None:
        now = time.perf_counter()
        if current[0] is not None:
            timings[current[0]] = round(now - current[1], 3)
        current[0], current[1] = label, now
        if label is not None:
            rep.stage(label)

    name = opts.name or default_name(opts.model)
    if not _NAME_RE.match(name):
        raise ConvertError(f"--name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    version = opts.version if opts.version is not None else int(time.strftime("%Y%m%d%H%M%S", time.gmtime()))
    if version < 0:
        raise ConvertError("--version must be 0 or more")
    if opts.sign_key is not None and not Path(opts.sign_key).is_file():
        raise ConvertError(f"signing key not found: {opts.sign_key}")
    signing_key = load_private_key(Path(opts.sign_key)) if opts.sign_key else None
    opts.output = Path(opts.output)
    if opts.output.exists() and not opts.output.is_dir():
        raise ConvertError(f"--output {opts.output} exists and is not a directory")

    stage("load model")
    if isinstance(opts.model, (str, Path)):
        source = load_model(opts.model, opts.custom_objects)
    else:
        source = describe(opts.model)
    task = make_task(opts.task, source)
    norm = _normalization(opts, source.input_shape[-1], task)
    original = source
    reference: Callable[[np.ndarray], Any] = original.predict  # gates measure against the original float model
    folded: list[str] = []
    if opts.fold_bgr:
        stage("fold bgr")
        if norm.color_order is not ColorOrder.RGB:
            raise ConvertError(f"--fold-bgr makes a model that takes RGB take BGR; this one takes {norm.color_order.value}")
        source, folded = _fold_bgr(source)
        reference = functools.partial(_on_swapped, original.predict)

    stage("load data")  # read in the original model's color order
    calibration = _dataset(opts.calibration, source, norm, opts.calibration_samples, "calibration data")
    if task.name == "detection" and not isinstance(opts.validation, Dataset):
        validation = task.validation_data(opts.validation, opts.validation_samples)  # type: ignore[attr-defined]
    elif opts.validation is not None:
        validation = _dataset(opts.validation, source, norm, opts.validation_samples, "validation data")
    else:
        validation = calibration
        logger.warning("no --validation data: accuracy is measured on the calibration data")
    if folded:  # from here on, everything feeds the folded model
        norm = norm.swapped()
        swapped = _swap_channels(calibration)
        validation = swapped if validation is calibration else _swap_channels(validation)
        calibration = swapped
    labels = read_labels(opts.labels) or list(getattr(task, "labels", []))
    prune_report = None
    if opts.prune:
        stage("prune")
        source, prune_report = _prune(opts, source, task, calibration, rep)

    with tempfile.TemporaryDirectory(prefix="edgegap-") as tmp:
        saved = Path(tmp) / "saved_model"
        stage("export")
        export_saved_model(task, source.model, saved)
        stage("float model")
        float_bytes = convert_float(saved, task)
        stage("quantize")
        model_bytes = quantize(saved, profile, task, calibration)
        original_float_bytes = float_bytes
        if prune_report is not None:
            original_saved = Path(tmp) / "original_saved_model"
            export_saved_model(task, original.model, original_saved)
            original_float_bytes = convert_float(original_saved, task)
        stage("evaluate")
        float_fn = reference
        accuracy = task.accuracy(float_fn, open_converted(model_bytes), validation)
        plain_accuracy = accuracy
        fallback: FallbackResult | None = None
        limit = profile.budgets.max_accuracy_drop
        if accuracy.drop > limit and opts.fallback and profile.quantization.allow_float_fallback:
            stage("fallback")
            rep.detail(f"accuracy drop {accuracy.drop:.2%} > {limit:.2%}: searching for layers to keep in float")
            fallback = find_float_layers(
                saved, profile, task, calibration,
                evaluate=lambda b: task.accuracy(float_fn, open_converted(b), validation),
                on_attempt=lambda n: rep.detail(f"fallback: trying {n} float layer(s)"),
            )
            if fallback.passed and fallback.model is not None and fallback.accuracy is not None:
                model_bytes, accuracy = fallback.model, fallback.accuracy

    stage("gates")
    graph = read_graph(model_bytes)
    threads = host_threads(profile.runtime.threads)
    timed = {"float": float_bytes, "quant": model_bytes}
    if prune_report is not None:
        timed["original"] = original_float_bytes
    latency = measure_latency(timed, threads=threads, runs=opts.latency_runs, withhold_amx=withholds_amx(profile))
    gates = [
        check_ops(graph, profile),
        check_size(len(model_bytes), profile),
        check_arena(graph, profile),
        check_accuracy(accuracy, profile),
        check_latency(latency["quant"], profile),
    ]
    passed = all(g.passed for g in gates)
    reason = first_failure(gates)

    stage("manifest")
    quant = open_converted(model_bytes, graph)
    if labels and task.name == "classification" and len(labels) != quant.outputs[0].shape[-1]:
        raise ConvertError(f"labels file has {len(labels)} labels but the model has {quant.outputs[0].shape[-1]} classes")
    manifest = build_manifest(opts, source, task, quant, model_bytes, norm, labels, name, version)
    golden = record_golden(quant, manifest, seed=0, count=opts.golden_count)
    manifest = manifest.model_copy(update={"golden": _golden_tolerance(manifest, golden)})
    metrics = _metrics(profile, model_bytes, float_bytes, accuracy, plain_accuracy, latency, graph, fallback,
                       validation, opts.validation is None)
    if folded:
        metrics["bgr_folded_into"] = folded
    pruning = None
    if prune_report is not None:
        pruned_accuracy = task.accuracy(reference, open_converted(float_bytes), validation)
        pruning = PruningSummary(prune_report, original_float_bytes, pruned_accuracy)
        metrics["pruning"] = _pruning_metrics(pruning, latency, profile)
    manifest = manifest.model_copy(update={"metrics": metrics, "gates": verdict(gates, forced=opts.force)})
    manifest = Manifest.model_validate(manifest.model_dump())  # re-validate the assembled manifest
    if signing_key is not None:
        manifest = sign_manifest(manifest, signing_key)

    result = ConvertResult(
        manifest=manifest, passed=passed, reason=reason, gates=gates, accuracy=accuracy,
        plain_accuracy=plain_accuracy, fallback=fallback, latency=latency, graph=graph,
        model_bytes=model_bytes, float_bytes=float_bytes, profile=profile,
        calibration_source=calibration.source, validation_source=validation.source, timings=timings,
        pruning=pruning,
    )
    stage("write")
    if passed or opts.force:
        from converter.report import write_report

        result.bundle = write_bundle(opts.output, model_bytes, manifest).path
        result.report_path = write_report(result, opts.output / REPORT_FILE)
    stage(None)
    return result


def _prune(opts: ConvertOptions, source: SourceModel, task: Task, calibration: Dataset, rep: Reporter) -> tuple[SourceModel, Any]:
    """Prune to the profile's target; the pruned model replaces the source for every later stage."""
    from converter.pruning.api import prune_for_profile

    protect = [*opts.protect, *task.protected_layers(source.model)]
    rep.detail(f"pruning to {opts.profile.name}'s target; protected: {', '.join(protect) or 'none'}")
    pruned, report = prune_for_profile(
        source.model, opts.profile.pruning, data=calibration.x, profile=opts.profile,
        importance=opts.prune_importance, protect=protect, steps=opts.prune_steps, epochs=opts.prune_epochs,
        calibration=calibration.x[:64],
    )
    for note in report.notes:
        logger.warning("pruning: %s", note)
    return dataclasses.replace(source, model=pruned), report


def _normalization(opts: ConvertOptions, channels: int, task: Task) -> Normalization:
    """The options' normalization, or the one the model records, which options may only repeat."""
    recorded = task.normalization()
    if recorded is None:
        color = opts.color_order or default_color_order(channels)
        return Normalization(list(opts.mean or [0.0]), list(opts.std or [255.0]), color, opts.resize)
    flag = recorded.contradicted_by(opts.mean, opts.std, opts.color_order)
    if flag is not None:
        raise ConvertError(
            f"the model's {task.name} sidecar sets its input normalization (mean {recorded.mean[0]:g}, "
            f"std {recorded.std[0]:g}, {recorded.color_order.value}); drop --{flag} or give the same value"
        )
    return dataclasses.replace(recorded, resize=opts.resize)


def _fold_bgr(source: SourceModel) -> tuple[SourceModel, list[str]]:
    """The source model made to take BGR (converter.color_fold); Keras models only."""
    from converter.color_fold import FoldError, fold_bgr

    if source.kind == "saved_model":
        raise FoldError("--fold-bgr edits a Keras model's weights; give the .keras or .h5 file, not a SavedModel")
    model, changed = fold_bgr(source.model)
    return dataclasses.replace(source, model=model), changed


def _on_swapped(predict: Callable[[np.ndarray], Any], x: np.ndarray) -> Any:
    """The original model's outputs on inputs swapped back to its own color order."""
    return predict(np.ascontiguousarray(x[..., ::-1]))


def _swap_channels(data: Dataset) -> Dataset:
    """The same samples with their channels reversed (RGB <-> BGR), for the folded model."""
    return dataclasses.replace(data, x=np.ascontiguousarray(data.x[..., ::-1]))


def _pruning_metrics(pruning: PruningSummary, latency: dict[str, LatencyStats], profile: Profile) -> dict[str, Any]:
    r, t = pruning.report, profile.pruning
    return {
        "target": "channels" if t.channels is not None else "macs" if t.macs is not None else "latency_ms",
        "channels_removed": round(r.ratio, 4),
        "importance": r.importance,
        "macs_original": r.before.macs,
        "macs_pruned": r.after.macs,
        "macs_ratio": round(r.macs_ratio, 4),
        "params_original": r.before.params,
        "params_pruned": r.after.params,
        "float_bytes_original": len(pruning.original_float_bytes),
        "latency_float_ms_p50_original": round(latency["original"].p50, 4),
        "accuracy_pruned_float": pruning.pruned_accuracy.quant_value,
        "accuracy_drop_pruned_float": pruning.pruned_accuracy.drop,
        "latency_method": r.latency.get("method", ""),
        "layers_kept_whole": len(r.kept_whole),
        "notes": list(r.notes),
    }


def _metrics(
    profile: Profile, model_bytes: bytes, float_bytes: bytes, accuracy: AccuracyReport, plain: AccuracyReport,
    latency: dict[str, LatencyStats], graph: ModelGraph, fallback: FallbackResult | None,
    validation: Dataset, on_calibration: bool,
) -> dict[str, Any]:
    q, f = latency["quant"], latency["float"]
    out: dict[str, Any] = {
        "quantization": profile.quantization.scheme.value,
        "size_bytes": len(model_bytes),
        "size_float_bytes": len(float_bytes),
        "size_ratio": round(len(model_bytes) / len(float_bytes), 4),
        "accuracy": {
            "metric": accuracy.metric,
            "float": accuracy.float_value,
            "quant": accuracy.quant_value,
            "drop": accuracy.drop,
            "samples": int(len(validation.x)),
            "data": "calibration" if on_calibration else "validation",
            **{k: v for k, v in accuracy.detail.items() if isinstance(v, (int, float, str))},
        },
        "latency_ms_p50": round(q.p50, 4),
        "latency_ms_p90": round(q.p90, 4),
        "latency_ms_p99": round(q.p99, 4),
        "latency_float_ms_p50": round(f.p50, 4),
        "latency_measured": latency_label(profile),
        "host_arch": host_arch(),
        "latency_threads": q.threads,
        "runtime": q.backend,
        "arena_estimate_bytes": graph.arena_estimate,
    }
    if profile.quantization.scheme is QuantScheme.INT8_FALLBACK:
        out["float_fallback"] = {
            "used": bool(fallback and fallback.passed),
            "float_layers": [e.label for e in fallback.float_layers] if fallback else [],
            "drop_before": plain.drop,
        }
    return out
