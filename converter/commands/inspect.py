"""`edgegap inspect`: a bundle's manifest, tensors and ops as tables, without TensorFlow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from agent.bundle.loading import MODEL_FILE, BundleError, read_manifest, sha256_file
from agent.bundle.manifest import Manifest
from converter.console import console, human_bytes
from converter.loading import quiet_native_stderr

logger = logging.getLogger(__name__)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, _fmt(v)))
    return rows


@click.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
def inspect(bundle: Path) -> None:
    """Print BUNDLE's manifest, tensor details and ops as tables (no checks; see verify).

    \b
    Examples:
      edgegap inspect bundle/
    """
    with quiet_native_stderr():
        _inspect(bundle)


def _inspect(bundle: Path) -> None:
    from converter.graph import read_graph

    manifest = read_manifest(bundle)
    model_path = bundle / MODEL_FILE
    if not model_path.is_file():
        raise BundleError(f"{bundle} is not a bundle: no {MODEL_FILE}")
    matches = sha256_file(model_path) == manifest.model.sha256
    console.print(_manifest_table(bundle, manifest, matches))
    console.print(_input_table(manifest))
    console.print(_outputs_table(manifest))
    if manifest.metrics:
        console.print(_metrics_table(manifest))
    gate_rows = _gate_rows(manifest)
    if gate_rows:
        console.print(_gates_table(gate_rows))
    try:
        graph = read_graph(model_path.read_bytes())
    except ValueError as exc:
        raise BundleError(f"{model_path}: {exc}") from exc
    _tensor_table(model_path, graph)
    console.print(_ops_table(graph))


def _manifest_table(bundle: Path, m: Manifest, matches: bool) -> Table:
    t = Table(title=f"Bundle {bundle}", title_justify="left", show_header=False)
    t.add_column("key")
    t.add_column("value", overflow="fold")
    for k, v in (
        ("name", m.name),
        ("version", m.version),
        ("profile", m.profile),
        ("created", m.created),
        ("task / decoder", f"{m.task} / {m.decoder.value}"),
        (
            "model",
            f"{human_bytes(m.model.size)}, sha256 {m.model.sha256}"
            + ("" if matches else "  [red](file differs!)[/]"),
        ),
        (
            "signature",
            f"{m.signature.algorithm}, key {m.signature.key_id}" if m.signature else "unsigned",
        ),
        (
            "labels",
            f"{len(m.labels)}: {', '.join(m.labels[:10])}{' …' if len(m.labels) > 10 else ''}"
            if m.labels
            else "none",
        ),
        (
            "golden",
            f"{m.golden.count} inputs, seed {m.golden.seed}, atol {_fmt(m.golden.atol)}"
            if m.golden
            else "none",
        ),
        (
            "gates",
            "passed"
            if m.gates.get("passed")
            else f"[red]FAILED: {', '.join(m.gates.get('failed', []))}[/]",
        ),
    ):
        t.add_row(k, str(v))
    return t


def _input_table(m: Manifest) -> Table:
    inp = m.input
    ti = Table(title="Input", title_justify="left")
    for col in ("name", "shape", "dtype", "scale", "zero point", "color", "resize", "mean", "std"):
        ti.add_column(col)
    ti.add_row(
        inp.name,
        str(inp.shape),
        inp.dtype,
        f"{inp.scale:.6g}",
        str(inp.zero_point),
        inp.color_order.value,
        inp.resize.value,
        _fmt(inp.mean),
        _fmt(inp.std),
    )
    return ti


def _outputs_table(m: Manifest) -> Table:
    to = Table(title="Outputs", title_justify="left")
    for col in ("index", "name", "role", "shape", "dtype", "scale", "zero point"):
        to.add_column(col)
    for o in m.outputs:
        to.add_row(
            str(o.index),
            o.name,
            o.role.value,
            str(o.shape),
            o.dtype,
            f"{o.scale:.6g}",
            str(o.zero_point),
        )
    return to


def _metrics_table(m: Manifest) -> Table:
    tm = Table(title="Metrics", title_justify="left", show_header=False)
    tm.add_column("metric")
    tm.add_column("value", overflow="fold")
    for key, text in _flatten(m.metrics):
        tm.add_row(key, text)
    return tm


def _gate_rows(m: Manifest) -> list[tuple[str, dict[str, Any]]]:
    """The manifest's gate results in the order the gates run, unknown ones after by name."""
    order = ["ops", "size", "arena", "accuracy", "latency"]
    return sorted(
        ((k, v) for k, v in m.gates.items() if isinstance(v, dict)),
        key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]),
    )


def _gates_table(gate_rows: list[tuple[str, dict[str, Any]]]) -> Table:
    tg = Table(title="Gates", title_justify="left")
    for col in ("gate", "status", "value", "limit", "note"):
        tg.add_column(col, overflow="fold")
    for gate, g in gate_rows:
        tg.add_row(
            gate,
            str(g.get("status", "")),
            str(g.get("value", "")),
            str(g.get("limit", "")),
            str(g.get("reason", "")),
        )
    return tg


def _ops_table(graph: Any) -> Table:
    tops = Table(
        title=f"Ops ({len(graph.ops)} in {graph.subgraphs} subgraph(s))", title_justify="left"
    )
    tops.add_column("op")
    tops.add_column("count", justify="right")
    for op, n in sorted(graph.op_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        tops.add_row(op + (" (custom)" if op in graph.custom_ops else ""), str(n))
    return tops


def _tensor_table(model_path: Path, graph: Any) -> None:
    from agent.runtime import ModelLoadError, open_model

    try:
        model = open_model(model_path)
    except ModelLoadError as exc:
        console.print(f"[yellow]interpreter could not open the model: {exc}[/]")
        return
    tt = Table(
        title=f"Interpreter tensors ({model.backend} {model.backend_version})", title_justify="left"
    )
    for col in (
        "io",
        "index",
        "tensor name",
        "signature name",
        "shape",
        "dtype",
        "scale",
        "zero point",
    ):
        tt.add_column(col)
    for io, infos, names in (
        ("input", model.inputs, graph.input_names),
        ("output", model.outputs, graph.output_names),
    ):
        for i in infos:
            tt.add_row(
                io,
                str(i.index),
                i.name,
                names.get(i.index, ""),
                str(list(i.shape)),
                np.dtype(i.dtype).name,
                f"{i.scale:.6g}",
                str(i.zero_point),
            )
    console.print(tt)
