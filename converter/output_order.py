"""The order of a converted model's outputs, as `get_output_details()` lists them.

Tools that read a detector's outputs by position (Frigate's TFLite detector, Coral's examples)
expect boxes, classes, scores, count. The TFLite converter lists a signature's outputs in its own
order, so the converter permutes the main subgraph's output list in place: the same tensors, the
same file size, only their order changes. Signature names keep pointing at the same tensors, and
the manifest records tensor indices, so nothing that reads outputs by name or index changes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


class OutputOrderError(ValueError):
    """The wanted order is not a permutation of the model's outputs."""


def output_indices(model_bytes: bytes) -> list[int]:
    """Tensor indices of the main subgraph's outputs, in the order the interpreter lists them."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(model_bytes, 0).Subgraphs(0)
    return [int(i) for i in graph.OutputsAsNumpy()] if graph.OutputsLength() else []


def reorder_outputs(model_bytes: bytes, order: Sequence[int]) -> bytes:
    """The model with its main subgraph's outputs listed as `order` (tensor indices).

    `order` must name each current output once; anything else raises OutputOrderError.
    """
    from ai_edge_litert import schema_py_generated as schema

    current = output_indices(model_bytes)
    wanted = [int(i) for i in order]
    if sorted(wanted) != sorted(current):
        raise OutputOrderError(
            f"output order {wanted} is not a permutation of the model's outputs {current}"
        )
    if wanted == current:
        return model_bytes
    buf = bytearray(model_bytes)
    graph = schema.Model.GetRootAs(buf, 0).Subgraphs(0)
    view = graph.OutputsAsNumpy()  # a writable view into buf: the int32 vector itself
    view[:] = wanted
    logger.info("outputs reordered from %s to %s", current, wanted)
    return bytes(buf)
