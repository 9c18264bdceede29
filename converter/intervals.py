"""Sampling uncertainty of accuracy figures: a validation set of n images measures a metric
only to within an interval, and a 1% gate on 100 images is read with it.

Proportions (top-1 accuracy, agreement) get a Wilson score interval; metrics that are not a
proportion of independent samples (detection mAP, tensor R²) get a percentile bootstrap over the
samples, with the same resampled indices for float and converted so a drop's interval is paired.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

BOOTSTRAP_ROUNDS = 200  # enough for the 2.5% and 97.5% percentiles to settle to about 0.005


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a proportion measured on n samples."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def resamples(n: int, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> list[np.ndarray]:
    """Bootstrap index sets: n indices drawn with replacement, `rounds` times (seeded)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(rounds)]


def percentile95(values: np.ndarray) -> list[float]:
    """The central 95% of bootstrap values, rounded for a report."""
    return [round(float(x), 4) for x in np.percentile(values, [2.5, 97.5])]
