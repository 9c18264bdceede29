"""Build the smaller model: replay the flattened graph with narrower layers and copy the surviving
weights in. Kernels really lose rows and columns; nothing is zeroed."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from converter.pruning.graph import GraphNode, Kind
from converter.pruning.plan import PrunePlan
from converter.pruning.trace import require_functional

logger = logging.getLogger(__name__)


def _var_name(v: Any) -> str:
    return str(getattr(v, "path", v.name)).split("/")[-1].split(":")[0]


def _slice(values: np.ndarray, keep: list[int] | None, axis: int) -> np.ndarray:
    return values if keep is None else np.take(values, keep, axis=axis)


def _mid_positions(in_keep: list[int], multiplier: int) -> list[int]:
    return [c * multiplier + k for c in in_keep for k in range(multiplier)]


def _sliced_weights(
    n: GraphNode, in_keep: list[int] | None, out_keep: list[int] | None, c_in: int | None
) -> list[np.ndarray]:
    """The layer's weights, in its own order, cut down to the surviving channels."""
    out = []
    for v in n.op.weights:
        w, name = np.asarray(v), _var_name(v)
        if n.kind in (Kind.CONV, Kind.DENSE):
            w = (
                _slice(_slice(w, in_keep, -2), out_keep, -1)
                if name == "kernel"
                else _slice(w, out_keep, 0)
            )
        elif n.kind is Kind.DEPTHWISE:
            w = _slice(w, in_keep, -2) if name == "kernel" else _slice(w, out_keep, 0)
        elif n.kind is Kind.SEPARABLE:
            if name == "depthwise_kernel":
                w = _slice(w, in_keep, -2)
            elif name == "pointwise_kernel":
                mid = None if in_keep is None else _mid_positions(in_keep, n.op.depth_multiplier)
                w = _slice(_slice(w, mid, -2), out_keep, -1)
            else:
                w = _slice(w, out_keep, 0)
        elif n.kind is Kind.BN:
            w = _slice(w, in_keep, 0)
        elif n.kind is Kind.PRELU and in_keep is not None and w.shape[-1] == c_in:
            w = _slice(w, in_keep, -1)
        out.append(w)
    return out


def _config(n: GraphNode, out_keep: list[int] | None) -> dict[str, Any]:
    cfg = dict(n.op.get_config())
    cfg["name"] = n.name
    if out_keep is None:
        return cfg
    width = len(out_keep)
    if n.kind in (Kind.CONV, Kind.SEPARABLE):
        cfg["filters"] = width
    elif n.kind is Kind.DENSE:
        cfg["units"] = width
    elif n.type_name == "Reshape":
        target = tuple(cfg["target_shape"])
        if target and target[-1] not in (-1, None):
            cfg["target_shape"] = (*target[:-1], width)
    elif n.type_name in ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"):
        noise = cfg.get("noise_shape")
        if noise and noise[-1] not in (None, 1):
            cfg["noise_shape"] = (*noise[:-1], width)
    return cfg


def rebuild(plan: PrunePlan) -> Any:
    """A new keras.Model with the plan's channels removed. Output shapes are unchanged."""
    import keras

    g = plan.graph
    fn = require_functional(g.model)
    tensors: dict[str, Any] = {}
    inputs = []
    for k, kt in zip(g.input_keys, fn.inputs, strict=True):
        layer_name = kt._keras_history[0].name if getattr(kt, "_keras_history", None) else None
        t = keras.Input(batch_shape=tuple(kt.shape), dtype=kt.dtype, name=layer_name)
        tensors[k] = t
        inputs.append(t)
    made: dict[int, Any] = {}
    shared_with_original: list[str] = []
    for n in g.nodes:
        local = {
            id(kt): tensors[k]
            for kt, k in zip(n.knode.arguments.keras_tensors, n.inputs, strict=True)
        }
        args, kwargs = n.knode.arguments.fill_in(local)
        first_call = n.layer_id not in made
        if first_call:
            made[n.layer_id] = _new_layer(n, plan, shared_with_original)
        layer = made[n.layer_id]
        result = layer(*args, **kwargs)
        outs = keras.tree.flatten(result)
        for k, t in zip(n.outputs, outs, strict=True):
            tensors[k] = t
        if (
            first_call
            and isinstance(layer, keras.layers.Layer)
            and layer is not n.op
            and n.op.weights
        ):
            in_keep = plan.kept(n.inputs[0]) if n.inputs else None
            out_keep = plan.kept(n.outputs[0])
            c_in = g.tensors[n.inputs[0]].channels if n.inputs else None
            layer.set_weights(_sliced_weights(n, in_keep, out_keep, c_in))
    if shared_with_original:
        logger.warning(
            "could not clone %s: the pruned model shares these layers with the original",
            ", ".join(shared_with_original),
        )
    outputs = [tensors[k] for k in g.output_keys]
    model = keras.Model(
        inputs=keras.tree.pack_sequence_as(fn._inputs_struct, inputs),
        outputs=keras.tree.pack_sequence_as(fn._outputs_struct, outputs),
        name=g.model.name,
    )
    for old, new in zip(keras.tree.flatten(g.model.outputs), model.outputs, strict=True):
        if tuple(old.shape) != tuple(new.shape):
            raise AssertionError(f"rebuilt output shape {new.shape} differs from {old.shape}")
    return model


def _new_layer(n: GraphNode, plan: PrunePlan, shared: list[str]) -> Any:
    import keras

    if not isinstance(n.op, keras.layers.Layer):
        return n.op  # a stateless keras op: replaying the same op is exact
    out_keep = plan.kept(n.outputs[0]) if n.outputs else None
    try:
        return type(n.op).from_config(_config(n, out_keep))
    except (TypeError, ValueError, NotImplementedError) as exc:
        if n.kind is not Kind.UNSUPPORTED:
            raise
        logger.debug("cannot clone %s: %s", n.name, exc)
        shared.append(n.name)
        return n.op
