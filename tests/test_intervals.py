"""Sampling intervals of accuracy figures: the mAP@0.5 and R² bootstraps (pure logic on
synthetic detections and outputs; the converted-detector test checks them on a real model)."""

from __future__ import annotations

import numpy as np
import pytest

from converter.evaluation import Detections, coco_map, map50_interval, map_of, match
from converter.intervals import percentile95, resamples
from converter.tasks.tensor import r2_drop, worst_r2_interval

BOX = np.array([[0.1, 0.1, 0.5, 0.5]], np.float32)


def _scene(n: int, missed_every: int) -> tuple[list, list, list, list]:
    """n images with one box each; `reference` finds all, `candidate` misses every k-th."""
    gt_b = [BOX for _ in range(n)]
    gt_c = [np.array([0]) for _ in range(n)]
    hit = Detections(BOX, np.array([0.9], np.float32), np.array([0]))
    ref = [hit] * n
    cand = [Detections.empty() if i % missed_every == 0 else hit for i in range(n)]
    return gt_b, gt_c, ref, cand


def test_map_of_all_images_is_coco_map_and_resampling_repeats_images() -> None:
    gt_b, gt_c, _, cand = _scene(10, 2)
    m = match(gt_b, gt_c, cand, 1)
    assert map_of(m).map50 == coco_map(gt_b, gt_c, cand, 1).map50
    assert map_of(m).map50 == pytest.approx(51 / 101)  # recall 0.5 at precision 1: 51 of 101 points
    assert map_of(m, [1, 1, 3]).map50 == pytest.approx(1.0)  # only images the candidate found
    assert map_of(m, [0, 2]).map50 == 0.0


def test_map50_interval_covers_the_estimate_and_narrows_with_more_images() -> None:
    widths = []
    for n in (20, 200):
        gt_b, gt_c, ref, cand = _scene(n, 4)
        rm, cm = match(gt_b, gt_c, ref, 1), match(gt_b, gt_c, cand, 1)
        ci = map50_interval(rm, cm)
        point = map_of(cm).map50
        assert ci["map50"][0] < point < ci["map50"][1]
        assert ci["float"] == [1.0, 1.0]  # the reference finds every box in every resample
        assert ci["drop"][0] < 1.0 - point < ci["drop"][1]
        widths.append(ci["map50"][1] - ci["map50"][0])
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 10x the images, about a third of the width
    assert map50_interval([], []) == {}


def test_identical_models_have_a_zero_width_drop() -> None:
    gt_b, gt_c, ref, _ = _scene(30, 3)
    m = match(gt_b, gt_c, ref, 1)
    assert map50_interval(m, m)["drop"] == [0.0, 0.0]


def test_worst_r2_interval_covers_the_worst_output() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(100, 8))
    good, bad = f + rng.normal(0, 0.05, f.shape), f + rng.normal(0, 0.5, f.shape)
    lo, hi = worst_r2_interval([(f, good), (f, bad)])
    worst = 1.0 - r2_drop(f, bad)[0]
    assert lo < worst < hi < 1.0 - r2_drop(f, good)[0]
    assert worst_r2_interval([(f[:1], bad[:1])]) == []


def test_resamples_are_seeded_and_percentile95_rounds() -> None:
    a, b = resamples(5, 3, seed=7), resamples(5, 3, seed=7)
    assert all((x == y).all() and x.shape == (5,) for x, y in zip(a, b, strict=True))
    assert percentile95(np.linspace(0, 1, 1001)) == [0.025, 0.975]
