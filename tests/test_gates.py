"""Gates as policy objects: which ones a profile's budgets select, and the scheme a bundle is named by."""

from __future__ import annotations

import yaml

from converter.gates import ArenaGate, LatencyStats, Measured, select_gates
from converter.graph import ModelGraph
from converter.result import bundle_scheme
from converter.tasks.base import AccuracyReport
from firmware_profiles import Profile, load_profile, parse_profile


def _without_arena_budget(name: str) -> Profile:
    data = load_profile(name).model_dump(mode="json")
    data["budgets"]["max_arena_bytes"] = None
    return parse_profile(yaml.safe_dump(data), f"{name}-no-arena.yaml")


def _graph(float_ops: list[str], arena: int = 1000) -> ModelGraph:
    return ModelGraph(
        ops=["QUANTIZE", "CONV_2D", *float_ops],
        custom_ops=set(),
        arena_estimate=arena,
        subgraphs=1,
        float_ops=float_ops,
    )


def _measured(graph: ModelGraph) -> Measured:
    accuracy = AccuracyReport(metric="r2", float_value=1.0, quant_value=0.999, drop=0.001)
    latency = LatencyStats(p50=1.0, p90=1.0, p99=1.0, mean=1.0, runs=1, threads=1, backend="litert")
    return Measured(graph=graph, size=10, accuracy=accuracy, latency=latency)


def test_the_budgets_a_profile_sets_select_its_gates() -> None:
    profile = load_profile("x86-avx2")
    assert [g.name for g in select_gates(profile)] == [
        "ops",
        "size",
        "arena",
        "accuracy",
        "latency",
    ]
    arena = next(g for g in select_gates(profile) if isinstance(g, ArenaGate))
    assert arena.budget == profile.budgets.max_arena_bytes
    assert [g.name for g in select_gates(_without_arena_budget("x86-avx2"))] == [
        "ops",
        "size",
        "accuracy",
        "latency",
    ]


def test_selected_gates_judge_the_measured_model() -> None:
    profile = load_profile("esp32-s3-tflm")
    budget = profile.budgets.max_arena_bytes
    assert budget is not None
    gates = {g.name: g for g in select_gates(profile)}
    arena = [
        gates["arena"].check(_measured(_graph([], arena=peak))).status
        for peak in (budget, budget + 1)
    ]
    assert arena == ["pass", "fail"]
    ops = gates["ops"].check(_measured(_graph(["SIN"])))
    assert ops.status == "fail" and "float ops in a full-integer model" in ops.reason


def test_int8_fallback_without_float_layers_is_named_int8() -> None:
    fallback, full = load_profile("x86-avx2"), load_profile("esp32-s3-tflm")
    assert bundle_scheme(fallback, _graph([])) == "int8"
    assert (
        bundle_scheme(fallback, _graph(["DEQUANTIZE"])) == "int8"
    )  # float32 output, integer inside
    assert bundle_scheme(fallback, _graph(["FULLY_CONNECTED", "DEQUANTIZE"])) == "int8-fallback"
    assert bundle_scheme(full, _graph([])) == "int8"
