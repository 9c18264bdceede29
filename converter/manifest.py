"""What the converter writes into a bundle's manifest: the I/O spec of the converted model, golden
tolerances, and the metrics it measured (sizes, accuracy, latency, float fallback, pruning)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
from datetime import datetime, timezone
from typing import Any

import numpy as np

from agent.bundle.manifest import Golden, InputSpec, Manifest, ModelFile, OutputRole, OutputSpec
from agent.runtime import LoadedModel, TensorInfo, open_model
from converter.data import Dataset, Normalization
from converter.fallback_cost import CostAwareResult
from converter.gates import LatencyStats, host_arch, latency_label
from converter.graph import ModelGraph, read_graph
from converter.options import ConvertError
from converter.result import PruningSummary, bundle_scheme
from converter.tasks.base import AccuracyReport, Task
from firmware_profiles import Profile, QuantScheme

logger = logging.getLogger(__name__)


def output_spec(info: TensorInfo, role: OutputRole) -> OutputSpec:
    """The manifest's record of one output tensor, as the interpreter reports it."""
    return OutputSpec(
        name=info.name,
        index=info.index,
        role=role,
        shape=list(info.shape),
        dtype=np.dtype(info.dtype).name,
        scale=info.scale,
        zero_point=info.zero_point,
    )


def open_converted(
    model_bytes: bytes, graph: ModelGraph | None = None, threads: int = 1
) -> LoadedModel:
    """Open a converted model; tensors carry their signature names, so outputs pair up by name."""
    graph = graph or read_graph(model_bytes)
    model = open_model(model_bytes, threads)
    model.inputs = [
        dataclasses.replace(t, name=graph.input_names.get(t.index, t.name)) for t in model.inputs
    ]
    model.outputs = [
        dataclasses.replace(t, name=graph.output_names.get(t.index, t.name)) for t in model.outputs
    ]
    return model


def build_manifest(
    profile: Profile,
    task: Task,
    quant: LoadedModel,
    model_bytes: bytes,
    norm: Normalization,
    labels: list[str],
    name: str,
    version: int,
) -> Manifest:
    info = quant.inputs[0]
    roles = task.output_roles(quant.outputs)
    if len(roles) != len(quant.outputs):
        raise ConvertError(
            f"task {task.name} gave {len(roles)} roles for {len(quant.outputs)} outputs"
        )
    return Manifest(
        name=name,
        version=version,
        profile=profile.name,
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
        outputs=[output_spec(o, r) for o, r in zip(quant.outputs, roles, strict=True)],
        labels=labels,
        extra=task.manifest_extra(),
    )


def golden_tolerance(manifest: Manifest, golden: Golden) -> Golden:
    """Float outputs get 2% of their golden range: kernels on other CPUs round differently."""
    atol = list(golden.atol)
    for j, out in enumerate(manifest.outputs):
        if out.scale > 0:
            continue
        values = np.concatenate(
            [np.frombuffer(base64.b64decode(e[j]), "<f4") for e in golden.expected]
        )
        span = float(values.max() - values.min()) if values.size else 0.0
        atol[j] = max(atol[j], 0.02 * span)
    return golden.model_copy(update={"atol": atol})


def bundle_metrics(
    profile: Profile,
    model_bytes: bytes,
    float_bytes: bytes,
    accuracy: AccuracyReport,
    plain: AccuracyReport,
    latency: dict[str, LatencyStats],
    graph: ModelGraph,
    fallback: CostAwareResult | None,
    validation: Dataset,
    on_calibration: bool,
    int8_size: int | None = None,
) -> dict[str, Any]:
    q, f = latency["quant"], latency["float"]
    out: dict[str, Any] = {
        "quantization": bundle_scheme(profile, graph),
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
            "float_ops": len(graph.float_layers),
            "drop_before": plain.drop,
            "size_over_int8": round(len(model_bytes) / int8_size, 4) if int8_size else 1.0,
        }
        if fallback is not None:
            out["float_fallback"]["budget"] = {
                "size": fallback.budget.size,
                "latency": fallback.budget.latency,
            }
    return out


def pruning_metrics(
    pruning: PruningSummary, latency: dict[str, LatencyStats], profile: Profile
) -> dict[str, Any]:
    r, t = pruning.report, profile.pruning
    return {
        "target": "channels"
        if t.channels is not None
        else "macs"
        if t.macs is not None
        else "latency_ms",
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
