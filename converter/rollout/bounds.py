"""What a canary must show to be promoted: the statistics of its retained status on the new
version, compared with the same device's before the rollout (or the stable group's).

Pure logic: `Sample` is what one status says, `Baseline` what it is compared with, `judge` the
comparison. A bound that cannot be evaluated (no baseline, or a status without the `drift`
score statistics) is reported as such; it never passes silently.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

ScoreMode = Literal["require", "skip"]


class Drift(BaseModel):
    """The `drift` object of a device's retained status: rolling score statistics."""

    model_config = ConfigDict(extra="ignore")

    window_s: float = Field(gt=0)
    frames: int = Field(ge=0)
    version: int | None = Field(
        default=None, description="The model version the window is about (it restarts on a swap)."
    )
    top_score_mean: float
    top_score_p10: float
    detections_per_frame: float = Field(ge=0)


class Baseline(BaseModel):
    """A canary's statistics before the rollout (source "device"), or the stable group's median
    (source "stable group"); None where unknown."""

    model_config = ConfigDict(extra="forbid")

    source: str
    fps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    drift: Drift | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class Sample:
    """One retained status, as far as a rollout is concerned."""

    online: bool
    health: str
    sha256: str
    version: int | None
    good: bool
    fps: float | None
    p50_ms: float | None
    p99_ms: float | None
    drift: Drift | None
    channel: str
    group: str

    @classmethod
    def of(cls, status: dict[str, Any]) -> Sample:
        model = status.get("model") if isinstance(status.get("model"), dict) else {}
        latency = status.get("latency_ms") if isinstance(status.get("latency_ms"), dict) else {}
        assert isinstance(model, dict) and isinstance(latency, dict)
        drift = None
        if isinstance(status.get("drift"), dict):
            try:
                drift = Drift.model_validate(status["drift"])
            except ValidationError as exc:
                logger.warning("ignored a malformed drift in a status: %s", exc.errors()[0]["msg"])
        version = model.get("version")
        return cls(
            online=status.get("state") == "online",
            health=str(status.get("health") or ""),
            sha256=str(model.get("sha256") or ""),
            version=version if isinstance(version, int) else None,
            good=model.get("good") is True,
            fps=_number(status.get("fps")),
            p50_ms=_number(latency.get("p50")),
            p99_ms=_number(latency.get("p99")),
            drift=drift,
            channel=str(status.get("channel") or ""),
            group=str(status.get("group") or "stable"),
        )

    def baseline(self, source: str = "device") -> Baseline:
        return Baseline(
            source=source, fps=self.fps, p50_ms=self.p50_ms, p99_ms=self.p99_ms, drift=self.drift
        )


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def group_baseline(samples: list[Sample]) -> Baseline | None:
    """The median statistics of samples (the stable group on its version); None if empty."""
    if not samples:
        return None
    drifts = [s.drift for s in samples if s.drift is not None]
    drift = None
    if drifts:
        drift = Drift(
            window_s=statistics.median(d.window_s for d in drifts),
            frames=int(statistics.median(d.frames for d in drifts)),
            top_score_mean=statistics.median(d.top_score_mean for d in drifts),
            top_score_p10=statistics.median(d.top_score_p10 for d in drifts),
            detections_per_frame=statistics.median(d.detections_per_frame for d in drifts),
        )
    return Baseline(
        source="stable group",
        fps=_median([s.fps for s in samples]),
        p50_ms=_median([s.p50_ms for s in samples]),
        p99_ms=_median([s.p99_ms for s in samples]),
        drift=drift,
    )


@dataclass(frozen=True)
class Bounds:
    """How far a canary's statistics may move from its baseline, and for how long they must hold."""

    window_s: float = 60.0  # in bounds for this long after passing probation
    min_fps_ratio: float = 0.8  # fps at least this times the baseline's
    max_latency_ratio: float = 1.5  # latency p50 at most this times the baseline's
    max_p99_ratio: float = 2.0  # latency p99 at most this times the baseline's
    max_score_drop: float = 0.1  # top_score_mean and top_score_p10 fall at most this much
    max_detections_change: float = 0.5  # detections per frame within this fraction of baseline
    scores: ScoreMode = "require"  # skip: promote without score statistics (said in the record)
    min_frames: int = 30  # drift statistics over fewer frames do not count
    min_canaries: int = 1  # canary devices online and counted

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def scores_ready(s: Sample, version: int, since_passed_s: float) -> bool:
    """Whether the status's drift window holds frames of the new version only: it says which
    version it is about (the window restarts on a swap), or else it has had time to fill since
    the device passed probation on the new version."""
    if s.drift is None:
        return False
    if s.drift.version is not None:
        return s.drift.version == version
    return since_passed_s >= s.drift.window_s


@dataclass(frozen=True)
class Judgement:
    problems: list[str]  # out of bounds: the rollout halts
    unknown: list[str]  # bounds that could not be evaluated on this sample


def judge(sample: Sample, base: Baseline | None, bounds: Bounds, scores_ready: bool) -> Judgement:
    """Compare one sample on the new version with its baseline. scores_ready: the sample's drift
    window covers only frames of the new version."""
    problems: list[str] = []
    unknown: list[str] = []
    if sample.health != "ok":
        problems.append(f"health is {sample.health or 'unknown'}")
    if base is None:
        unknown.append("no baseline to compare fps and latency with")
    else:
        _rates(sample, base, bounds, problems, unknown)
    if bounds.scores == "skip":
        return Judgement(problems, unknown)
    if sample.drift is None:
        unknown.append("score bounds not evaluable: the status has no drift statistics")
    elif base is None or base.drift is None:
        unknown.append("score bounds not evaluable: no drift statistics before the rollout")
    elif not scores_ready or sample.drift.frames < bounds.min_frames:
        unknown.append("score statistics do not cover enough frames of the new version yet")
    else:
        _scores(sample.drift, base.drift, bounds, problems)
    return Judgement(problems, unknown)


def _rates(
    s: Sample, base: Baseline, bounds: Bounds, problems: list[str], unknown: list[str]
) -> None:
    if s.fps is None or base.fps is None or base.fps <= 0:
        unknown.append("fps not known")
    elif s.fps < bounds.min_fps_ratio * base.fps:
        problems.append(
            f"fps {s.fps:.1f} is under {bounds.min_fps_ratio:g} x {base.fps:.1f} ({base.source})"
        )
    for name, now, before, ratio in (
        ("p50", s.p50_ms, base.p50_ms, bounds.max_latency_ratio),
        ("p99", s.p99_ms, base.p99_ms, bounds.max_p99_ratio),
    ):
        if now is None or before is None or before <= 0:
            unknown.append(f"latency {name} not known")
        elif now > ratio * before:
            problems.append(
                f"latency {name} {now:.2f} ms is over {ratio:g} x {before:.2f} ms ({base.source})"
            )


def _scores(now: Drift, before: Drift, bounds: Bounds, problems: list[str]) -> None:
    for name in ("top_score_mean", "top_score_p10"):
        a, b = getattr(now, name), getattr(before, name)
        if a < b - bounds.max_score_drop:
            problems.append(
                f"{name} fell from {b:.3f} to {a:.3f} (by more than {bounds.max_score_drop:g})"
            )
    a, b = now.detections_per_frame, before.detections_per_frame
    if abs(a - b) > bounds.max_detections_change * max(b, 0.1):  # near 0: an absolute 0.1
        problems.append(
            f"detections per frame went from {b:.2f} to {a:.2f} "
            f"(by more than {bounds.max_detections_change:.0%})"
        )
