"""The one check that a model's tensors are the ones its manifest describes.

Used by the agent when it loads a bundle and by `edgegap verify`, so both refuse the same bundles
with the same words.
"""

from __future__ import annotations

import logging

import numpy as np

from agent.bundle.loading import BundleError
from agent.bundle.manifest import Manifest
from agent.runtime import LoadedModel

logger = logging.getLogger(__name__)


class ModelMismatch(BundleError):
    """The model's input or outputs differ from what its manifest says."""


def check_model_io(model: LoadedModel, manifest: Manifest) -> None:
    """Raise ModelMismatch unless the input and every manifest output match the interpreter's.

    Outputs are matched by their recorded tensor index. An output whose shape the interpreter
    reports with a dynamic (non-positive) dimension is matched on dtype alone.
    """
    info, spec = model.inputs[0], manifest.input
    if list(info.shape) != spec.shape or np.dtype(info.dtype).name != spec.dtype:
        raise ModelMismatch(
            f"model input is {list(info.shape)} {np.dtype(info.dtype).name}, "
            f"manifest says {spec.shape} {spec.dtype}"
        )
    if spec.scale and not np.isclose(info.scale, spec.scale, rtol=1e-6):
        raise ModelMismatch(
            f"model input scale {info.scale:.6g} differs from the manifest's {spec.scale:.6g}"
        )
    by_index = {o.index: o for o in model.outputs}
    for out in manifest.outputs:
        real = by_index.get(out.index)
        if real is None:
            raise ModelMismatch(
                f"manifest output {out.name!r} points at tensor {out.index}, "
                "which is not a model output"
            )
        shape = list(real.shape)
        dynamic = any(d <= 0 for d in shape)
        if np.dtype(real.dtype).name != out.dtype or (shape != out.shape and not dynamic):
            raise ModelMismatch(
                f"output {out.name!r} is {shape} {np.dtype(real.dtype).name}, "
                f"manifest says {out.shape} {out.dtype}"
            )
