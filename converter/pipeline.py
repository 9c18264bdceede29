"""The conversion pipeline: model and data in, a checked (and optionally signed) bundle out.

The stages (converter.stages) run in this order over one ConvertState: load the model, read the
data, prune, export and quantize, measure accuracy against float, fall back to float layers if the
profile allows and the accuracy gate needs it, check the gates the profile selects, record the
manifest and golden outputs, add the metrics, sign, then write model.tflite, manifest.json and
report.json.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from converter import finish, stages
from converter.loading import quiet_native_stderr
from converter.manifest import build_manifest, open_converted
from converter.options import (
    REPORT_FILE,
    STAGES,
    ConvertError,
    ConvertOptions,
    LogReporter,
    Reporter,
)
from converter.prepare import default_name, make_task, read_labels
from converter.prepare import normalization as _normalization
from converter.result import ConvertResult
from converter.tasks import TASK_NAMES

logger = logging.getLogger(__name__)

__all__ = [
    "REPORT_FILE",
    "STAGES",
    "STAGE_FUNCTIONS",
    "TASK_NAMES",
    "ConvertError",
    "ConvertOptions",
    "ConvertResult",
    "LogReporter",
    "Reporter",
    "_normalization",
    "build_manifest",
    "convert",
    "default_name",
    "make_task",
    "open_converted",
    "read_labels",
]

STAGE_FUNCTIONS: tuple[stages.Stage, ...] = (
    stages.load,
    stages.calibrate,
    stages.prune,
    stages.quantize_model,
    stages.evaluate,
    stages.condition_int8,
    stages.fallback,
    stages.gate,
    finish.golden,
    finish.report,
    finish.sign,
    finish.write,
)


def convert(opts: ConvertOptions, reporter: Reporter | None = None) -> ConvertResult:
    """Run every stage; gates that fail make result.passed False (the bundle is written only if forced)."""
    with quiet_native_stderr():
        return _convert(opts, reporter or LogReporter())


def _convert(opts: ConvertOptions, reporter: Reporter) -> ConvertResult:
    with tempfile.TemporaryDirectory(prefix="edgegap-") as tmp:
        state = stages.start(opts, reporter, Path(tmp))
        for stage in STAGE_FUNCTIONS:
            stage(state)
    return state.result
