"""What a conversion is asked to do (ConvertOptions), who hears how it goes (Reporter), and the
error it stops with (ConvertError). The pipeline reads the options and never changes them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.bundle.manifest import ColorOrder, ResizeMode
from agent.errors import EdgegapError
from converter.data import Dataset
from converter.tasks.base import Task
from firmware_profiles import IODtype, Profile

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
# what a Reporter is told, in order; "fold bgr", "prune", "condition" and "fallback" only when they happen
STAGES = ("load model", "fold bgr", "load data", "prune", "export", "float model", "quantize", "evaluate", "condition", "fallback", "gates",
          "manifest", "write")  # fmt: skip


class ConvertError(EdgegapError, ValueError):
    """A conversion that cannot go on: bad options, labels that do not fit, an unusable task."""


class Reporter(Protocol):
    """Receives stage changes; the CLI shows them as a rich progress bar."""

    def stage(self, name: str) -> None: ...

    def detail(self, text: str) -> None: ...


class LogReporter:
    """The default Reporter: stages go to the log, nothing to the screen."""

    def stage(self, name: str) -> None:
        logger.info("stage: %s", name)

    def detail(self, text: str) -> None:
        logger.debug("%s", text)


@dataclass
class ConvertOptions:
    model: str | Path | Any  # a path, or a keras.Model
    profile: Profile
    calibration: str | Path | Dataset
    output: Path
    validation: str | Path | Dataset | None = None
    mean: list[float] | None = None  # default: 0, or what the model records (a detector's sidecar)
    std: list[float] | None = None  # default: 255, or what the model records
    color_order: ColorOrder | None = (
        None  # default: gray for 1 channel, else rgb; or what the model records
    )
    resize: ResizeMode = ResizeMode.STRETCH
    labels: list[str] | str | Path | None = None
    name: str | None = None
    version: int | None = None  # default: UTC time as YYYYMMDDHHMMSS, so it grows
    task: str | Task = "auto"
    sign_key: Path | None = None
    force: bool = False
    fallback: bool = True  # use the profile's float fallback when it allows one
    fallback_budget: tuple[float, float] | None = None  # (size, latency) over int8; None: profile's
    calibration_samples: int = 200
    activation_ranges: str = "mse"  # mse or minmax: converter.activation_ranges
    conditioning: str = "auto"  # auto (where int8 misses the gate), on, off: converter.conditioning
    validation_samples: int = 1000
    latency_runs: int = 50
    custom_objects: Sequence[str | Path] = ()
    golden_count: int = 3
    prune: bool = False  # apply the profile's pruning target before quantizing
    prune_epochs: int = 0  # distillation fine-tuning on the calibration data after pruning
    prune_steps: int = 1
    prune_importance: str = "l1"
    protect: Sequence[str] = ()  # layer names never pruned (the task adds its own)
    pixel_exact: str = "auto"  # on, off, or auto: fold the normalization where it leaves ties
    fold_bgr: bool = False  # fold the BGR-to-RGB swap into the model (converter.color_fold)
    input_dtype: IODtype | None = None  # the model input's dtype; default: the profile's
    input_shape: tuple[int, ...] | None = None  # wraps a subclassed model in a functional one
