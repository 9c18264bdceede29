"""What the conversion starts from: the bundle's name, its labels, the task, the input normalization,
the data, and the source model as folded for BGR or pruned. Each piece is read from the options
(never written back) and from what the model records."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converter.data import Dataset, Normalization, default_color_order, load_data
from converter.loading import SourceModel
from converter.options import ConvertError, ConvertOptions, Reporter
from converter.tasks import TASK_NAMES
from converter.tasks.base import Task
from firmware_profiles import IODtype, Profile, QuantScheme

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_name(model: Any) -> str:
    stem = (
        Path(model).stem if isinstance(model, (str, Path)) else str(getattr(model, "name", "model"))
    )
    name = re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip("-._") or "model"
    return name[:64]


def read_labels(labels: list[str] | str | Path | None) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, list):
        return [str(x) for x in labels]
    path = Path(labels)
    if not path.is_file():
        raise ConvertError(f"labels file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return numbered_labels(lines, path) or lines


MAX_LABEL_INDEX = 100_000
_NUMBERED = re.compile(r"^(\d+)(?:\s*[:,]\s*|\s+)(\S.*)$")


def numbered_labels(lines: list[str], path: Path) -> list[str] | None:
    """Labels of a file whose every line is `index label` (Coral's `0  person`, Frigate's
    labelmap, `0: person`), placed by index with `class<N>` in the gaps; None for plain lines."""
    found = [_NUMBERED.match(line) for line in lines]
    if not lines or not all(found):
        return None
    by_index: dict[int, str] = {}
    for m in found:
        assert m is not None
        k = int(m[1])
        if k > MAX_LABEL_INDEX or k in by_index:
            why = f"over {MAX_LABEL_INDEX:,}" if k > MAX_LABEL_INDEX else "given twice"
            raise ConvertError(f"labels file {path}: index {k} is {why}")
        by_index[k] = m[2].strip()
    return [by_index.get(k, f"class{k}") for k in range(max(by_index) + 1)]


def with_input_dtype(profile: Profile, dtype: IODtype | None) -> Profile:
    """The profile with its model input dtype replaced (--input-dtype); unchanged for None.

    Only integer inputs are offered: a uint8 input takes camera pixels as they come, which is what
    Coral's and Frigate's TFLite detectors feed.
    """
    q = profile.quantization
    if dtype is None or dtype is q.input_dtype:
        return profile
    if dtype not in (IODtype.INT8, IODtype.UINT8):
        raise ConvertError(f"--input-dtype is int8 or uint8, not {dtype.value}")
    if q.scheme not in (QuantScheme.INT8, QuantScheme.INT8_FALLBACK):
        raise ConvertError(
            f"--input-dtype {dtype.value} needs scheme int8 or int8-fallback; "
            f"profile {profile.name} uses {q.scheme.value}"
        )
    quant = q.model_copy(update={"input_dtype": dtype})
    return profile.model_copy(update={"quantization": quant})


def make_task(task: str | Task, source: SourceModel) -> Task:
    """A task adapter by name; 'auto' picks classification for one [batch, classes] output."""
    from converter.tasks.classification import ClassificationTask, looks_like_classifier
    from converter.tasks.tensor import TensorTask

    if isinstance(task, Task):
        if hasattr(task, "source") and getattr(task, "source", None) is None:
            task.source = source  # type: ignore[attr-defined]
        return task
    from converter.tasks.detection import DetectionTask

    if task == "auto" and DetectionTask.applies_to(source.source):
        task = "detection"
        logger.info("task: detection (auto: detector sidecar found)")
    if task == "auto":
        probe = source.predict(np.zeros((1, *source.input_shape), np.float32))
        task = "classification" if looks_like_classifier(source, probe) else "tensor"
        logger.info("task: %s (auto)", task)
    if task == "classification":
        return ClassificationTask(source)
    if task == "tensor":
        return TensorTask(source)
    if task == "detection":
        return DetectionTask(source=source)
    raise ConvertError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}")


def normalization(opts: ConvertOptions, channels: int, task: Task) -> Normalization:
    """The options' normalization, or the one the model records, which options may only repeat."""
    recorded = task.normalization()
    if recorded is None:
        color = opts.color_order or default_color_order(channels)
        return Normalization(
            list(opts.mean or [0.0]), list(opts.std or [255.0]), color, opts.resize
        )
    flag = recorded.contradicted_by(opts.mean, opts.std, opts.color_order)
    if flag is not None:
        raise ConvertError(
            f"the model's {task.name} sidecar sets its input normalization (mean {recorded.mean[0]:g}, "
            f"std {recorded.std[0]:g}, {recorded.color_order.value}); drop --{flag} or give the same value"
        )
    return dataclasses.replace(recorded, resize=opts.resize)


def dataset(
    src: str | Path | Dataset, source: SourceModel, norm: Normalization, limit: int, what: str
) -> Dataset:
    if isinstance(src, Dataset):
        if tuple(src.x.shape[1:]) != source.input_shape:
            raise ConvertError(
                f"{what} has samples of shape {tuple(src.x.shape[1:])}; the model takes {source.input_shape}"
            )
        return src
    return load_data(src, source.input_shape, norm, limit=limit, what=what)


def align_labels(data: Dataset, model_labels: list[str]) -> Dataset:
    """Folder-per-class labels as the model's class indices: by the --labels file when it names
    every folder, else by folder names that are class numbers, else in sorted folder order."""
    labels = data.labels
    if not isinstance(labels, dict) or "class_names" not in labels:
        return data
    names = [str(n) for n in labels["class_names"]]
    if model_labels and all(n in model_labels for n in names):
        index = [model_labels.index(n) for n in names]
    elif all(n.isdigit() for n in names):
        index = [int(n) for n in names]
    else:
        logger.warning(
            "class folders %s taken as classes 0..%d in sorted order", names, len(names) - 1
        )
        return data
    y = np.asarray(index, np.int64)[np.asarray(labels["y"], np.int64)]
    return dataclasses.replace(data, labels={**labels, "y": y})


def fold_bgr(source: SourceModel) -> tuple[SourceModel, list[str]]:
    """The source model made to take BGR (converter.color_fold); Keras models only."""
    from converter.color_fold import FoldError
    from converter.color_fold import fold_bgr as fold

    if source.kind == "saved_model":
        raise FoldError(
            "--fold-bgr edits a Keras model's weights; give the .keras or .h5 file, not a SavedModel"
        )
    model, changed = fold(source.model)
    return dataclasses.replace(source, model=model), changed


class MemoPredict:
    """A float model's outputs, computed once per input array: the fallback scores the same
    validation set against many candidate models."""

    def __init__(self, predict: Callable[[np.ndarray], Any], size: int = 4) -> None:
        self.predict = predict
        self.size = size
        self._seen: list[tuple[np.ndarray, Any]] = []

    def __call__(self, x: np.ndarray) -> Any:
        for array, out in self._seen:
            if array is x:
                return out
        out = self.predict(x)
        self._seen = [*self._seen[-(self.size - 1) :], (x, out)]
        return out


def on_swapped(predict: Callable[[np.ndarray], Any], x: np.ndarray) -> Any:
    """The original model's outputs on inputs swapped back to its own color order."""
    return predict(np.ascontiguousarray(x[..., ::-1]))


def swap_channels(data: Dataset) -> Dataset:
    """The same samples with their channels reversed (RGB <-> BGR), for the folded model."""
    return dataclasses.replace(data, x=np.ascontiguousarray(data.x[..., ::-1]))


def prune_source(
    opts: ConvertOptions, source: SourceModel, task: Task, calibration: Dataset, rep: Reporter
) -> tuple[SourceModel, Any]:
    """Prune to the profile's target; the pruned model replaces the source for every later stage."""
    from converter.pruning.api import prune_for_profile

    profile = opts.profile
    protect = [*opts.protect, *task.protected_layers(source.model)]
    rep.detail(f"pruning to {profile.name}'s target; protected: {', '.join(protect) or 'none'}")
    pruned, report = prune_for_profile(
        source.model,
        profile.pruning,
        data=calibration.x,
        profile=profile,
        importance=opts.prune_importance,
        protect=protect,
        steps=opts.prune_steps,
        epochs=opts.prune_epochs,
        calibration=calibration.x[:64],
    )
    for note in report.notes:
        logger.warning("pruning: %s", note)
    return dataclasses.replace(source, model=pruned), report
