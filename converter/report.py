"""What a conversion tells people: a summary table (float vs converted), the gates, and report.json."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from converter.console import gates_table, human_bytes
from converter.gates import host_measured, latency_label
from converter.result import ConvertResult, scheme_line

logger = logging.getLogger(__name__)


def summary_table(result: ConvertResult) -> Table:
    """Float vs converted: size, accuracy against float, and latency, with the ratios."""
    m = result.manifest
    lat_f, lat_q = result.latency["float"], result.latency["quant"]
    acc = result.accuracy
    table = Table(
        title=f"{m.name} v{m.version} for {result.profile.name}",
        title_justify="left",
        caption=f"accuracy on {result.validation_source}"
        + (
            " (calibration data: no --validation given)"
            if m.metrics.get("accuracy", {}).get("data") == "calibration"
            else ""
        ),
        caption_justify="left",
    )
    table.add_column("")
    table.add_column("float32", justify="right")
    table.add_column(result.scheme, justify="right")
    table.add_column("ratio / drop", justify="right")
    fsize, qsize = len(result.float_bytes), len(result.model_bytes)
    table.add_row("size", human_bytes(fsize), human_bytes(qsize), f"{qsize / fsize:.3f}")
    ci = acc.detail.get("ci95", {})
    quant_ci = ci.get("quant", ci.get(acc.metric))
    table.add_row(
        acc.metric.replace("_", " "),
        f"{acc.float_value:.4f}" + _ci(ci.get("float")),
        f"{acc.quant_value:.4f}" + _ci(quant_ci),
        f"drop {acc.drop:.2%}" + _drop_ci(ci.get("drop")),
    )
    if acc.metric != "top1_agreement" and "top1_agreement" in acc.detail:
        agree = acc.detail["top1_agreement"]
        table.add_row(
            "top-1 agreement",
            "1.0000",
            f"{agree:.4f}" + _ci(ci.get("top1_agreement")),
            f"{1 - agree:.2%}",
        )
    if "kl_divergence" in acc.detail:
        table.add_row("output KL divergence", "0", f"{acc.detail['kl_divergence']:.4g} nats", "")
    where = m.metrics.get("latency_measured", "")
    table.add_row(
        f"latency p50, {where}, {lat_q.threads} thr",
        f"{lat_f.p50:.3f} ms",
        f"{lat_q.p50:.3f} ms",
        f"{lat_q.p50 / lat_f.p50:.2f}" if lat_f.p50 > 0 else "-",
    )
    return table


def _ci(interval: Any) -> str:
    """' [lo, hi]': a 95% interval beside a proportion; empty when there is none."""
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


def _drop_ci(interval: Any) -> str:
    """' [lo, hi]' of a drop, in points; empty when there is none."""
    return f" [{interval[0]:.2%}, {interval[1]:.2%}]" if interval else ""


SLOWER_THAN_FLOAT = 1.10  # p50 ratios closer to 1 than this are within a short run's noise
SLOWER_BY_MS = 0.05  # and differences this small are call overhead, not the model


def speed_note(
    scheme: str, float_ms: float, quant_ms: float, size_ratio: float, where: str
) -> str | None:
    """Says so when the converted model ran clearly slower than float on a host that stands for
    the device: on some CPUs the int8 kernels lose to the float ones, and then the scheme buys
    size, not speed."""
    if (
        float_ms <= 0
        or quant_ms <= SLOWER_THAN_FLOAT * float_ms
        or quant_ms - float_ms < SLOWER_BY_MS
    ):
        return None
    return (
        f"note: {scheme} ran {quant_ms / float_ms:.2f}x slower than float32 ({where}): there it buys size "
        f"({size_ratio:.2f}x), not speed; measure on the device (`edgegap bench`) before choosing"
    )


def pruning_table(result: ConvertResult) -> Table | None:
    """Original, pruned and converted models side by side: MACs, parameters, bytes, latency, accuracy."""
    pr = result.pruning
    if pr is None:
        return None
    r, m = pr.report, result.manifest.metrics["pruning"]
    acc = result.accuracy
    lat = result.latency
    table = Table(
        title=f"Pruning: {r.removed_fraction:.1%} of prunable channels removed ({r.ratio:.0%} asked; "
        f"{r.importance} importance, target {m['target']})",
        title_justify="left",
        caption="; ".join([m["latency_method"], *m["notes"]]).strip("; ") or None,
        caption_justify="left",
    )
    table.add_column("")
    table.add_column("original float32", justify="right")
    table.add_column("pruned float32", justify="right")
    table.add_column(f"pruned {result.scheme}", justify="right")
    table.add_row(
        "MACs", f"{r.before.macs:,}", f"{r.after.macs:,}", f"{r.after.macs:,} ({r.macs_ratio:.2f}x)"
    )
    table.add_row(
        "parameters", f"{r.before.params:,}", f"{r.after.params:,}", f"{r.after.params:,}"
    )
    table.add_row(
        "bytes (.tflite)",
        human_bytes(len(pr.original_float_bytes)),
        human_bytes(len(result.float_bytes)),
        human_bytes(len(result.model_bytes)),
    )
    base = lat["original"].p50
    table.add_row(
        f"latency p50 ({result.manifest.metrics.get('latency_measured', '')})",
        f"{base:.3f} ms",
        f"{lat['float'].p50:.3f} ms ({lat['float'].p50 / base:.2f}x)"
        if base > 0
        else f"{lat['float'].p50:.3f} ms",
        f"{lat['quant'].p50:.3f} ms ({lat['quant'].p50 / base:.2f}x)"
        if base > 0
        else f"{lat['quant'].p50:.3f} ms",
    )
    table.add_row(
        acc.metric.replace("_", " "),
        f"{acc.float_value:.4f}",
        f"{pr.pruned_accuracy.quant_value:.4f} (drop {pr.pruned_accuracy.drop:.2%})",
        f"{acc.quant_value:.4f} (drop {acc.drop:.2%})",
    )
    return table


def fallback_text(result: ConvertResult) -> Text | None:
    """What the fallback kept, with what each layer cost and bought; or why it failed."""
    fb = result.fallback
    if fb is None:
        return None
    before = f"int8 drop was {result.plain_accuracy.drop:.2%}"
    kept = "; ".join(
        f"{c.layer.label}: +{c.size_cost:.1%} size, +{c.latency_cost:.1%} latency (est.), "
        f"divergence -{c.gain:.3g}"
        for c in fb.kept
    )
    if fb.passed:
        return Text(
            f"float fallback ({fb.budget.describe()}): {before}; kept {len(fb.kept)} layer(s) in float: {kept}"
        )
    text = f"float fallback failed: {before}; {fb.reason}"
    return Text(text + (f" (kept: {kept})" if kept else ""), style="red")


def frontier_table(result: ConvertResult) -> Table | None:
    """Every model the fallback tried: float layers against fidelity, size and latency."""
    fb = result.fallback
    if fb is None:
        return None
    metric = result.plain_accuracy.metric.replace("_", " ")
    table = Table(title=f"Float fallback frontier ({fb.budget.describe()})", title_justify="left")
    for col in (
        "float layers",
        metric,
        "drop",
        "size / int8",
        "latency / int8 (est.)",
        "budget",
        "gate",
    ):
        table.add_column(col, justify="right")
    for p in fb.frontier:
        table.add_row(
            str(p.float_layers),
            f"{p.metric:.4f}",
            f"{p.drop:.2%}",
            f"{p.size_ratio:.3f}",
            f"{p.latency_ratio:.3f}",
            "within" if p.in_budget else Text("over", style="red"),
            Text("pass", style="green") if p.passed else Text("fail", style="red"),
        )
    return table


def conditioning_line(record: Any) -> str | None:
    """One line on what --conditioning did (converter.conditioning), from the manifest's record."""
    from converter.conditioning import summary

    return f"conditioning: {summary(record)}" if record else None


def render(result: ConvertResult) -> Group:
    parts: list[Any] = [summary_table(result), gates_table(result.gates)]
    pruned = pruning_table(result)
    if pruned is not None:
        parts.insert(0, pruned)
    parts.append(
        Text(
            scheme_line(
                result.profile, result.graph, len(result.model_bytes), len(result.int8_bytes)
            )
        )
    )
    frontier = frontier_table(result)
    if frontier is not None:
        parts.append(frontier)
    fb = fallback_text(result)
    if fb is not None:
        parts.append(fb)
    lat_f, lat_q = result.latency["float"], result.latency["quant"]
    if not host_measured(result.profile):  # only where this host stands for the device
        slow = speed_note(
            result.scheme,
            lat_f.p50,
            lat_q.p50,
            len(result.model_bytes) / len(result.float_bytes),
            latency_label(result.profile),
        )
        if slow is not None:
            parts.append(Text(slow, style="yellow"))
    conditioned = conditioning_line(result.manifest.metrics.get("conditioning"))
    if conditioned:
        parts.append(Text(conditioned))
    folded = result.manifest.metrics.get("bgr_folded_into")
    if folded:
        parts.append(
            Text(
                f"input: BGR frames as OpenCV reads them (the channel swap is folded into "
                f"{', '.join(folded)}); accuracy is against the original model on RGB"
            )
        )
    if result.bundle is not None:
        signed = (
            f", signed by {result.manifest.signature.key_id}" if result.manifest.signature else ""
        )
        parts.append(Text(f"bundle: {result.bundle}{signed}"))
    return Group(*parts)


def comparison_table(results: Sequence[ConvertResult]) -> Table:
    """One row per conversion: the figures that tell profiles apart."""
    table = Table(title="Conversions", title_justify="left")
    for col in (
        "profile",
        "scheme",
        "I/O",
        "size",
        "vs float",
        "accuracy",
        "drop",
        "latency p50",
        "vs float",
        "measured",
        "float layers",
        "gates",
    ):
        table.add_column(
            col,
            justify="right"
            if col not in ("profile", "scheme", "I/O", "measured", "gates")
            else "left",
        )
    for r in results:
        q = r.profile.quantization
        lat_f, lat_q = r.latency["float"], r.latency["quant"]
        layers = str(len(r.graph.float_layers))
        table.add_row(
            r.profile.name,
            r.scheme,
            f"{q.input_dtype.value}/{q.output_dtype.value}",
            human_bytes(len(r.model_bytes)),
            f"{len(r.model_bytes) / len(r.float_bytes):.3f}",
            f"{r.accuracy.quant_value:.4f}",
            f"{r.accuracy.drop:.2%}",
            f"{lat_q.p50:.3f} ms",
            f"{lat_q.p50 / lat_f.p50:.2f}" if lat_f.p50 > 0 else "-",
            r.manifest.metrics.get("latency_measured", ""),
            layers,
            Text("passed" if r.passed else "FAILED", style="green" if r.passed else "bold red"),
        )
    return table


def report_dict(result: ConvertResult) -> dict[str, Any]:
    m = result.manifest
    fb = result.fallback
    return {
        "name": m.name,
        "version": m.version,
        "profile": m.profile,
        "task": m.task,
        "created": m.created,
        "passed": result.passed,
        "reason": result.reason,
        "bundle": str(result.bundle) if result.bundle else None,
        "model": m.model.model_dump(),
        "signed_by": m.signature.key_id if m.signature else None,
        "calibration": result.calibration_source,
        "validation": result.validation_source,
        "metrics": m.metrics,
        "accuracy_detail": result.accuracy.detail,
        "latency": {k: v.to_dict() for k, v in result.latency.items()},
        "gates": [g.to_dict() for g in result.gates],
        "ops": dict(sorted(result.graph.op_counts.items())),
        "scheme": scheme_line(
            result.profile, result.graph, len(result.model_bytes), len(result.int8_bytes)
        ),
        "fallback": None if fb is None else fallback_dict(result),
        "timings_s": result.timings,
    }


def fallback_dict(result: ConvertResult) -> dict[str, Any]:
    """The fallback for report.json: budget, kept layers with cost and gain, candidates, frontier."""
    fb = result.fallback
    assert fb is not None

    def cand(c: Any) -> dict[str, Any]:
        e = c.layer
        return {
            "node": e.node,
            "layer": e.label,
            "op": e.op,
            "rmse_steps": e.rmse_steps,
            "gain": c.gain,
            "size_cost": c.size_cost,
            "latency_cost": c.latency_cost,
        }

    return {
        "passed": fb.passed,
        "reason": fb.reason,
        "budget": {"size": fb.budget.size, "latency": fb.budget.latency},
        "drop_before": result.plain_accuracy.drop,
        "float_layers": [cand(c) for c in fb.kept],
        "candidates": [cand(c) for c in fb.candidates],
        "frontier": [dataclasses.asdict(p) for p in fb.frontier],
    }


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN becomes null, NumPy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def write_report(result: ConvertResult, path: Path) -> Path:
    path.write_text(
        json.dumps(_clean(report_dict(result)), indent=2, sort_keys=False) + "\n", encoding="utf-8"
    )
    return path
