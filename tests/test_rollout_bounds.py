"""The rollout's bounds and record, as pure logic: what a canary's status must show against its
baseline, score statistics that are missing or do not yet cover the new version, and records
from the network that are refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from converter.rollout.bounds import Bounds, Drift, Sample, group_baseline, judge, scores_ready
from converter.rollout.record import parse_record

DRIFT = {"window_s": 10.0, "frames": 300, "top_score_mean": 0.8, "top_score_p10": 0.6,
         "detections_per_frame": 2.0}  # fmt: skip


def status(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "state": "online", "health": "ok", "channel": "lobby", "group": "canary",
        "model": {"name": "m", "version": 2, "sha256": "a" * 64, "good": True},
        "fps": 30.0, "latency_ms": {"p50": 5.0, "p99": 8.0}, "drift": dict(DRIFT),
    }  # fmt: skip
    out.update(changes)
    return out


BASE = Sample.of(status()).baseline()


def problems(ready: bool = True, **changes: Any) -> list[str]:
    return judge(Sample.of(status(**changes)), BASE, Bounds(), ready).problems


def test_in_bounds_has_no_problem_and_nothing_unknown() -> None:
    verdict = judge(Sample.of(status(fps=27.0)), BASE, Bounds(), True)
    assert verdict.problems == [] and verdict.unknown == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"health": "degraded"}, "health is degraded"),
        ({"fps": 20.0}, "fps 20.0 is under 0.8 x 30.0 (device)"),
        ({"latency_ms": {"p50": 9.0, "p99": 8.0}}, "latency p50 9.00 ms is over 1.5 x 5.00 ms"),
        ({"latency_ms": {"p50": 5.0, "p99": 17.0}}, "latency p99 17.00 ms is over 2 x 8.00 ms"),
        ({"drift": {**DRIFT, "top_score_mean": 0.65}}, "top_score_mean fell from 0.800 to 0.650"),
        ({"drift": {**DRIFT, "top_score_p10": 0.4}}, "top_score_p10 fell from 0.600 to 0.400"),
        ({"drift": {**DRIFT, "detections_per_frame": 3.5}}, "detections per frame went from 2.00"),
    ],
)
def test_each_bound_halts_when_left(changes: dict[str, Any], expected: str) -> None:
    found = problems(**changes)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_score_bounds_are_never_passed_silently() -> None:
    no_drift = status()
    del no_drift["drift"]
    verdict = judge(Sample.of(no_drift), BASE, Bounds(), True)
    assert verdict.problems == []
    assert verdict.unknown == ["score bounds not evaluable: the status has no drift statistics"]
    before = BASE.model_copy(update={"drift": None})
    verdict = judge(Sample.of(status()), before, Bounds(), True)
    assert verdict.unknown == ["score bounds not evaluable: no drift statistics before the rollout"]
    verdict = judge(Sample.of(status()), BASE, Bounds(), scores_ready=False)
    assert "do not cover enough frames of the new version" in verdict.unknown[0]
    few = status(drift={**DRIFT, "frames": 5})
    assert judge(Sample.of(few), BASE, Bounds(), True).unknown != []
    skipped = judge(Sample.of(no_drift), BASE, Bounds(scores="skip"), True)
    assert skipped.problems == [] and skipped.unknown == []
    # skip leaves out only the scores: a bad fps still halts
    assert judge(Sample.of(status(fps=1.0)), BASE, Bounds(scores="skip"), True).problems


def test_drift_counts_once_its_window_is_about_the_new_version_only() -> None:
    about_v2 = Sample.of(status(drift={**DRIFT, "version": 2}))
    assert scores_ready(about_v2, 2, since_passed_s=0.0)
    assert not scores_ready(Sample.of(status(drift={**DRIFT, "version": 1})), 2, 999.0)
    unversioned = Sample.of(status())  # no version: the window must have filled since probation
    assert not scores_ready(unversioned, 2, since_passed_s=9.0)
    assert scores_ready(unversioned, 2, since_passed_s=10.0)
    no_drift = status()
    del no_drift["drift"]
    assert not scores_ready(Sample.of(no_drift), 2, 999.0)


def test_no_baseline_leaves_rates_unknown_and_the_stable_group_gives_one() -> None:
    verdict = judge(Sample.of(status()), None, Bounds(), True)
    assert "no baseline to compare fps and latency with" in verdict.unknown
    group = group_baseline([Sample.of(status(fps=f)) for f in (10.0, 20.0, 60.0)])
    assert group is not None and group.source == "stable group" and group.fps == 20.0
    assert group.drift == Drift(**DRIFT)
    assert group_baseline([]) is None


def test_a_malformed_drift_counts_as_absent() -> None:
    sample = Sample.of(status(drift={"window_s": -1, "frames": "many"}))
    assert sample.drift is None


def record(**changes: Any) -> bytes:
    out: dict[str, Any] = {
        "schema": "edgegap.rollout/1", "channel": "lobby", "name": "m", "version": 3,
        "sha256": "b" * 64, "stage": "canary", "state": "canary", "started": 1.0, "updated": 2.0,
        "devices": {"cam-1": {"state": "watching", "reason": "in bounds for 3 of 60 s"}},
    }  # fmt: skip
    out.update(changes)
    return json.dumps(out).encode()


def test_records_from_the_network_are_checked() -> None:
    parsed = parse_record(record())
    assert parsed.devices["cam-1"].state.value == "watching"
    for raw, reason in [
        (record(schema="edgegap.rollout/9"), "unknown rollout record schema"),
        (record(state="maybe"), "state"),
        (record(sha256="xyz"), "sha256"),
        (record(devices={f"d{i}": {} for i in range(1001)}), "over 1000"),
        (b"[1]", "must be a JSON object"),
        (b"x" * (1024 * 1024 + 1), "bytes"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_record(raw)
