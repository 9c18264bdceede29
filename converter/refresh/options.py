"""What a refresh is asked to do (RefreshOptions), what came of it (RefreshOutcome), and the
error it stops with (RefreshError)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import EdgegapError
from converter.gates import GateResult
from converter.refresh.gates import Scores
from converter.refresh.registry import Version
from converter.refresh.train import TrainSettings
from firmware_profiles import Profile

logger = logging.getLogger(__name__)


class RefreshError(EdgegapError, ValueError):
    """A refresh that cannot run: bad input, or a step that failed."""


@dataclass
class RefreshOptions:
    student: Path
    data: Path
    holdout: Path
    profile: Profile
    registry: Path
    channel: str | None = None
    teacher: Path | None = None  # default: the student's float model
    old_holdout: Path | None = None  # default: generated domain a test split
    replay: Path | None = None  # default: generated domain a training split
    sign_key: Path | None = None
    prune: bool = False
    min_gain: float = 0.0
    version: int | None = None
    name: str | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    calibration_samples: int = 200  # half captures, half replay images
    publish: Callable[[Path], dict[str, Any]] | None = None  # sends the bundle, says where


@dataclass
class RefreshOutcome:
    version: Version
    parent: Version
    passed: bool
    reason: str
    gates: list[GateResult]
    candidate: Scores | None
    deployed: Scores | None
    seconds: dict[str, float]
