"""What `edgegap prune` prints: the cost table, the layers kept whole, the fine-tuning loss."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from converter.console import human_bytes


def _ratio(value: float) -> str:
    return f"{value:.3f}×"


def cost_table(report: Any) -> Table:
    table = Table(title="Pruning: original vs pruned (per sample, float weights)")
    for col in ("", "original", "pruned", "pruned/original"):
        table.add_column(col, justify="right" if col else "left")
    b, a = report.before, report.after
    table.add_row("MACs", f"{b.macs:,}", f"{a.macs:,}", _ratio(a.macs / b.macs if b.macs else 1))
    table.add_row("MACs predicted by the graph", "", f"{report.predicted_macs:,}", "")
    table.add_row(
        "parameters",
        f"{b.params:,}",
        f"{a.params:,}",
        _ratio(a.params / b.params if b.params else 1),
    )
    table.add_row(
        "weight bytes",
        human_bytes(b.bytes),
        human_bytes(a.bytes),
        _ratio(a.bytes / b.bytes if b.bytes else 1),
    )
    table.add_row(
        "channels (prunable groups)", f"{report.channels_before:,}", f"{report.channels_after:,}",
        _ratio(report.channels_after / report.channels_before if report.channels_before else 1),
    )  # fmt: skip
    return table


def kept_table(report: Any) -> Table:
    table = Table(title="Layers kept whole (no filter removed)")
    table.add_column("layer")
    table.add_column("filters", justify="right")
    table.add_column("why", overflow="fold")
    for k in report.kept_whole:
        table.add_row(k.layer, str(k.channels), k.reason)
    return table


def loss_line(labels: Any, alpha: float, what: str) -> str:
    if labels is None:
        return f"fine-tune: distillation alone (detection distillation loss) on {what}"
    if alpha >= 1:
        return f"fine-tune: detection task loss alone (alpha 1) on {what}"
    if alpha <= 0:
        return f"fine-tune: detection distillation alone (alpha 0; labels unused) on {what}"
    return f"fine-tune: detection task loss + distillation (alpha {alpha:g}) on {what}"


def sparsity_table(sreport: Any) -> Table:
    table = Table(title=f"Magnitude pruning: {sreport.sparsity:.1%} of kernel weights are zero")
    for col in ("", "dense", "sparse", "sparse/dense"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row(
        "zipped weights", human_bytes(sreport.dense_zipped), human_bytes(sreport.sparse_zipped),
        _ratio(sreport.sparse_zipped / sreport.dense_zipped),
    )  # fmt: skip
    return table
