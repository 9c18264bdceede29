"""What `edgegap import` tells people: the tensors and the layout chosen, the gates, report.json."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.bundle.manifest import Manifest
from converter.console import gates_table, human_bytes
from converter.gates import GateResult, LatencyStats, first_failure
from converter.graph import ModelGraph
from converter.layouts import Layout

logger = logging.getLogger(__name__)


@dataclass
class ImportResult:
    """What one import produced: the manifest, the layout chosen, the gates and latency."""

    manifest: Manifest
    layout: Layout
    graph: ModelGraph
    gates: list[GateResult]
    latency: LatencyStats
    model_bytes: bytes
    normalization_note: str
    bundle: Path | None = None
    report_path: Path | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def reason(self) -> str:
        return first_failure(self.gates)


def tensors_table(result: ImportResult) -> Table:
    m = result.manifest
    table = Table(
        title=f"{m.name} v{m.version} for {m.profile}: {human_bytes(m.model.size)}",
        title_justify="left",
    )
    for col in ("tensor", "name", "index", "shape", "dtype", "scale / zero point", "role"):
        table.add_column(col)
    i = m.input
    quant = lambda s, z: f"{s:.6g} / {z}" if s else "-"  # noqa: E731
    table.add_row("input", i.name, "", str(i.shape), i.dtype, quant(i.scale, i.zero_point), "")
    for o in m.outputs:
        table.add_row(
            "output", o.name, str(o.index), str(o.shape), o.dtype, quant(o.scale, o.zero_point),
            o.role.value,
        )  # fmt: skip
    return table


def render(result: ImportResult) -> Group:
    m = result.manifest
    parts: list[Any] = [
        tensors_table(result),
        Text(f"layout: {result.layout.why} -> decoder {m.decoder.value}"),
    ]
    if result.normalization_note:
        parts.append(Text(f"input: {result.normalization_note}"))
    parts.append(gates_table(result.gates))
    if result.bundle is not None:
        signed = f", signed by {m.signature.key_id}" if m.signature else ", unsigned"
        parts.append(Text(f"bundle: {result.bundle}{signed}"))
    return Group(*parts)


def report_dict(result: ImportResult) -> dict[str, Any]:
    m = result.manifest
    return {
        "name": m.name,
        "version": m.version,
        "profile": m.profile,
        "task": m.task,
        "decoder": m.decoder.value,
        "layout": result.layout.why,
        "created": m.created,
        "passed": result.passed,
        "reason": result.reason,
        "bundle": str(result.bundle) if result.bundle else None,
        "model": m.model.model_dump(),
        "signed_by": m.signature.key_id if m.signature else None,
        "input": m.input.model_dump(mode="json"),
        "outputs": [o.model_dump(mode="json") for o in m.outputs],
        "metrics": m.metrics,
        "latency": {"model": result.latency.to_dict()},
        "gates": [g.to_dict() for g in result.gates],
        "ops": dict(sorted(result.graph.op_counts.items())),
    }


def write_report(result: ImportResult, path: Path) -> Path:
    path.write_text(json.dumps(report_dict(result), indent=2) + "\n", encoding="utf-8")
    return path
