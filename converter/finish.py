"""The conversion's last stages: the manifest and golden outputs, the metrics and the gates'
verdict, the signature, and the bundle with report.json (see converter.stages for the first ones)."""

from __future__ import annotations

import logging

from agent.bundle.golden import record_golden
from agent.bundle.loading import write_bundle
from agent.bundle.manifest import Manifest
from agent.bundle.signing import sign_manifest
from converter.gates import first_failure, verdict
from converter.manifest import (
    build_manifest,
    bundle_metrics,
    golden_tolerance,
    open_converted,
    pruning_metrics,
)
from converter.options import REPORT_FILE, ConvertError
from converter.result import ConvertResult, PruningSummary
from converter.stages import ConvertState

logger = logging.getLogger(__name__)


def golden(s: ConvertState) -> None:
    """The manifest's I/O spec, and golden outputs recorded on the converted model."""
    s.enter("manifest")
    if (
        s.labels
        and s.task.name == "classification"
        and len(s.labels) != (classes := s.quant.outputs[0].shape[-1])
    ):
        raise ConvertError(
            f"labels file has {len(s.labels)} labels but the model has {classes} classes"
        )
    manifest = build_manifest(
        s.profile, s.task, s.quant, s.model_bytes, s.norm, s.labels, s.name, s.version
    )
    recorded = record_golden(s.quant, manifest, seed=0, count=s.opts.golden_count)
    s.manifest = manifest.model_copy(update={"golden": golden_tolerance(manifest, recorded)})


def report(s: ConvertState) -> None:
    """The manifest's metrics (with pruning's, measured here) and the gates' verdict."""
    metrics = bundle_metrics(
        s.profile,
        s.model_bytes,
        s.float_bytes,
        s.accuracy,
        s.plain_accuracy,
        s.latency,
        s.graph,
        s.fallback,
        s.validation,
        s.opts.validation is None,
        len(s.int8_bytes),
    )
    if s.folded:
        metrics["bgr_folded_into"] = s.folded
    if s.ranges is not None:
        metrics["activation_ranges"] = s.ranges.record()
    if s.conditioning is not None:
        metrics["conditioning"] = s.conditioning.record()
    if s.pixel_fold is not None:
        info = s.quant.inputs[0]
        exact = info.scale == 1.0 and info.zero_point in (0, 128)
        metrics["pixel_input"] = {**s.pixel_fold.record(), "pixel_exact": exact}
    if s.prune_report is not None:
        pruned_accuracy = s.task.accuracy(s.reference, open_converted(s.float_bytes), s.validation)
        s.pruning = PruningSummary(s.prune_report, s.original_float_bytes, pruned_accuracy)
        metrics["pruning"] = pruning_metrics(s.pruning, s.latency, s.profile)
    manifest = s.manifest.model_copy(
        update={"metrics": metrics, "gates": verdict(s.gates, forced=s.opts.force)}
    )
    s.manifest = Manifest.model_validate(
        manifest.model_dump()
    )  # re-validate the assembled manifest


def sign(s: ConvertState) -> None:
    if s.signing_key is not None:
        s.manifest = sign_manifest(s.manifest, s.signing_key)


def failure_reason(s: ConvertState) -> str:
    """The first failed gate's reason; for the accuracy gate, the fallback's when it ran out of budget."""
    reason = first_failure(s.gates)
    failed = [g.name for g in s.gates if not g.passed]
    if failed and failed[0] == "accuracy" and s.fallback is not None and not s.fallback.passed:
        return s.fallback.reason
    return reason


def write(s: ConvertState) -> None:
    """The result; the bundle and report.json only if every gate passed, or with --force."""
    s.result = ConvertResult(
        manifest=s.manifest,
        passed=s.passed,
        reason=failure_reason(s),
        gates=s.gates,
        accuracy=s.accuracy,
        plain_accuracy=s.plain_accuracy,
        fallback=s.fallback,
        latency=s.latency,
        graph=s.graph,
        model_bytes=s.model_bytes,
        int8_bytes=s.int8_bytes,
        float_bytes=s.float_bytes,
        profile=s.profile,
        calibration_source=s.calibration.source,
        validation_source=s.validation.source,
        timings=s.timings,
        pruning=s.pruning,
    )
    s.enter("write")
    if s.result.passed or s.opts.force:
        from converter.report import write_report

        s.result.bundle = write_bundle(s.output, s.model_bytes, s.manifest).path
        s.result.report_path = write_report(s.result, s.output / REPORT_FILE)
    s.enter(None)
