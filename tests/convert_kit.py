"""Converting a small Keras model as the int8 tests do: tensor task, x86-avx2, no fallback,
gates forced, and the int8 model's outputs on the validation inputs for comparison with float."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def convert_tensor(
    model: Any, calibration: np.ndarray, validation: np.ndarray, output: Path, **options: Any
) -> tuple[Any, np.ndarray]:
    """`convert` with options (ConvertOptions fields) added; returns its result and the int8
    model's first output on validation, shaped as the float model's."""
    from converter.data import Dataset
    from converter.manifest import open_converted
    from converter.pipeline import ConvertOptions, convert
    from converter.tasks.tensor import run_model
    from firmware_profiles import load_profile

    result = convert(
        ConvertOptions(
            model=model,
            profile=load_profile("x86-avx2"),
            calibration=Dataset(calibration),
            validation=Dataset(validation),
            output=output,
            task="tensor",
            fallback=False,
            force=True,
            latency_runs=3,
            golden_count=1,
            **options,
        )
    )
    got = run_model(open_converted(result.model_bytes), validation)[0]
    return result, got.reshape(len(validation), *model.output_shape[1:])
