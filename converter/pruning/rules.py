"""The per-layer channel rules of the channel-dependency graph.

`classify` says which rule a layer or op follows (its Kind); `analyse` applies the rules in
topological order: a convolution or dense layer creates fresh atoms for its filters, channel-wise
layers pass atoms through, adds and multiplies union the atoms of their inputs, concatenations join
atom lists, flatten tiles them. A node no rule can follow safely pins the channels around it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from converter.pruning.graph import ChannelGraph, GraphNode, GraphTensor, Kind

logger = logging.getLogger(__name__)


PRODUCERS = (Kind.CONV, Kind.DENSE, Kind.SEPARABLE)


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Activations that act on each element alone; softmax-like ones mix channels and are excluded.
ELEMENTWISE_ACTIVATIONS = _names(
    """linear relu relu6 leaky_relu elu selu celu gelu silu swish hard_silu hard_swish sigmoid
    hard_sigmoid log_sigmoid sparse_sigmoid tanh hard_tanh tanh_shrink soft_shrink hard_shrink
    softplus softsign sparse_plus squareplus exponential mish threshold"""
)

_PASS_LAYERS = _names(
    """ReLU LeakyReLU ELU Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianNoise
    GaussianDropout AlphaDropout ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D
    Cropping3D UpSampling1D UpSampling2D UpSampling3D MaxPooling1D MaxPooling2D MaxPooling3D
    AveragePooling1D AveragePooling2D AveragePooling3D GlobalAveragePooling1D GlobalAveragePooling2D
    GlobalAveragePooling3D GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D Identity
    ActivityRegularization Resizing"""
)
_MERGE_LAYERS = _names("Add Subtract Multiply Maximum Minimum Average")
_UNARY_OPS = _names(
    """Relu Relu6 Sigmoid SparseSigmoid Softplus Softsign SoftShrink SparsePlus Silu Squareplus
    LogSigmoid LeakyRelu HardSigmoid HardSilu Elu Selu Gelu Celu TanhShrink HardTanh HardShrink
    Threshold Tanh Exp Expm1 Log Log1p Abs Absolute Negative Sqrt Rsqrt Square Clip Cast Sign Round
    Floor Ceil Erf Sin Cos Reciprocal"""
)
_BINARY_OPS = _names("Add Subtract Multiply Divide TrueDivide Maximum Minimum Power")

_PRODUCER_KINDS = {
    "Conv1D": Kind.CONV,
    "Conv2D": Kind.CONV,
    "Conv3D": Kind.CONV,
    "Dense": Kind.DENSE,
    "SeparableConv1D": Kind.SEPARABLE,
    "SeparableConv2D": Kind.SEPARABLE,
}

# Layers whose rule follows from their type name alone.
_KIND_BY_TYPE = {
    "Dense": Kind.DENSE,
    "DepthwiseConv1D": Kind.DEPTHWISE,
    "DepthwiseConv2D": Kind.DEPTHWISE,
    "SeparableConv1D": Kind.SEPARABLE,
    "SeparableConv2D": Kind.SEPARABLE,
    "PReLU": Kind.PRELU,
    "Activation": Kind.PASS,
    **dict.fromkeys(_PASS_LAYERS, Kind.PASS),
    **dict.fromkeys(_MERGE_LAYERS, Kind.MERGE),
    "Concatenate": Kind.CONCAT,
    "Flatten": Kind.FLATTEN,
    "Reshape": Kind.RESHAPE,
}


class _Unsupported(Exception):
    pass


Rule = tuple[list[list[int]], list[tuple[int, int]]]  # output atoms, unions


# --------------------------------------------------------------------------------------------------
# Which rule a node follows


def _activation_name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _channels_last(layer: Any) -> bool:
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _non_tensor_args_scalar(knode: Any) -> bool:
    from keras import KerasTensor

    for arg in knode.arguments._flat_arguments:
        if isinstance(arg, KerasTensor) or arg is None or isinstance(arg, (str, bool)):
            continue
        if np.size(np.asarray(arg)) > 1:
            return False
    return True


def _classify_op(node: GraphNode, module: str) -> tuple[Kind, str]:
    """A keras op called on tensors (not a layer): channel-wise when known and its other
    arguments are scalars."""
    t = node.type_name
    if module.startswith("keras.src.ops.") and _non_tensor_args_scalar(node.knode):
        if t in _UNARY_OPS and len(node.inputs) == 1:
            return Kind.PASS, ""
        if t in _BINARY_OPS:
            return Kind.MERGE, ""
    return Kind.UNSUPPORTED, f"op {t} is not known to be channel-wise"


def _classify_layer(op: Any, t: str, rank: int) -> tuple[Kind, str]:
    """A built-in channels-last layer whose activation, if any, acts on each element alone."""
    if t in ("Conv1D", "Conv2D", "Conv3D"):
        if op.groups != 1:
            return Kind.UNSUPPORTED, f"grouped convolution (groups={op.groups})"
        return Kind.CONV, ""
    if t == "BatchNormalization":
        axis = op.axis if isinstance(op.axis, int) else None
        if axis not in (-1, rank - 1):
            return Kind.UNSUPPORTED, f"batch normalization over axis {op.axis}"
        return Kind.BN, ""
    if t in _KIND_BY_TYPE:
        return _KIND_BY_TYPE[t], ""
    if t == "Rescaling" and np.size(op.scale) == 1 and np.size(op.offset) == 1:
        return Kind.PASS, ""
    return Kind.UNSUPPORTED, f"{t} is not handled by the channel graph"


def classify(node: GraphNode, rank: int) -> tuple[Kind, str]:
    """Which channel rule a node follows; UNSUPPORTED with a reason when none applies safely."""
    import keras

    op, t = node.op, node.type_name
    module = type(op).__module__
    if not isinstance(op, keras.layers.Layer):
        return _classify_op(node, module)
    if not module.startswith("keras.src.layers."):
        return Kind.UNSUPPORTED, f"custom layer {t}"
    if not _channels_last(op):
        return Kind.UNSUPPORTED, "channels_first data format"
    act = getattr(op, "activation", None)
    if act is not None and _activation_name(act) not in ELEMENTWISE_ACTIVATIONS:
        if t in _PRODUCER_KINDS and getattr(op, "groups", 1) == 1:
            return _PRODUCER_KINDS[t], f"activation {_activation_name(act)} mixes its outputs"
        return Kind.UNSUPPORTED, f"activation {_activation_name(act)} mixes channels"
    return _classify_layer(op, t, rank)


# --------------------------------------------------------------------------------------------------
# What each rule does to the channel atoms


def _producer_atoms(g: ChannelGraph, node: GraphNode, n: int) -> list[int]:
    """A weighted layer's filters get one atom each, shared by every call of that layer."""
    atoms = g.producer_atoms.get(node.layer_id)
    if atoms is None:
        atoms = g.new_atoms(n)
        for j, a in enumerate(atoms):
            g.origin[a] = (node.name, j)
        g.producer_atoms[node.layer_id] = atoms
    if len(atoms) != n:
        raise _Unsupported("shared layer called with different output widths")
    return atoms


def _sink(g: ChannelGraph, node: GraphNode, slot: int, atoms: list[int], unions: list) -> None:
    """A layer's per-channel weights are sliced once, so all its calls must keep the same channels."""
    prev = g.sink_atoms.get((node.layer_id, slot))
    if prev is None:
        g.sink_atoms[(node.layer_id, slot)] = atoms
    elif len(prev) != len(atoms):
        raise _Unsupported("shared layer called with different input widths")
    else:
        unions.extend(zip(prev, atoms, strict=True))


def _merge_rule(ins: list[GraphTensor], c_out: int) -> Rule:
    """Element-wise n-ary: full-width inputs are unioned; single-channel ones broadcast."""
    unions: list[tuple[int, int]] = []
    full = [t.atoms for t in ins if t.atoms is not None and len(t.atoms) == c_out]
    if not full or any(t.atoms is None for t in ins):
        raise _Unsupported("inputs without a static channel axis")
    for t in ins:
        assert t.atoms is not None
        if len(t.atoms) == c_out:
            unions.extend(zip(full[0], t.atoms, strict=True))
        elif len(t.atoms) != 1:
            raise _Unsupported("inputs that do not broadcast on channels")
    return [list(full[0])], unions


def _concat_rule(node: GraphNode, ins: list[GraphTensor], out: GraphTensor) -> Rule:
    """On the channel axis the atom lists join; on another axis the inputs' channels are one."""
    unions: list[tuple[int, int]] = []
    x = ins[0].atoms
    assert x is not None
    rank = len(out.shape)
    if node.op.axis in (-1, rank - 1):
        joined = [a for t in ins for a in (t.atoms or [])]
        return [joined], unions
    for t in ins[1:]:
        assert t.atoms is not None
        if len(t.atoms) != len(x):
            raise _Unsupported("concatenated inputs differ in channels")
        unions.extend(zip(x, t.atoms, strict=True))
    return [list(x)], unions


def _reshape_rule(node: GraphNode, inp: GraphTensor, out: GraphTensor) -> Rule:
    """A reshape that keeps the channel axis passes atoms; one that flattens tiles them."""
    x = inp.atoms
    assert x is not None and out.channels is not None
    c_out = out.channels
    if len(x) == c_out and (node.kind is Kind.RESHAPE or len(inp.shape) == 2):
        return [list(x)], []
    spatial = [d for d in inp.shape[1:-1] if d is not None]
    positions = int(np.prod(spatial)) if len(spatial) == len(inp.shape) - 2 else -1
    if len(out.shape) == 2 and positions > 0 and c_out == positions * len(x):
        node.kind = Kind.FLATTEN
        return [list(x) * positions], []
    raise _Unsupported("reshape that moves the channel axis")


def _one_input_rule(g: ChannelGraph, node: GraphNode, inp: GraphTensor, out: GraphTensor) -> Rule:
    """Layers with one tensor input: producers, depthwise, per-channel weights, pass-through."""
    x = inp.atoms
    assert x is not None and out.channels is not None
    c_out = out.channels
    unions: list[tuple[int, int]] = []
    kind = node.kind
    if kind in PRODUCERS:
        _sink(g, node, 0, x, unions)
        return [_producer_atoms(g, node, c_out)], unions
    if kind is Kind.DEPTHWISE:
        m = node.op.depth_multiplier
        if len(x) * m != c_out:
            raise _Unsupported("unexpected depthwise output width")
        _sink(g, node, 0, x, unions)
        return [[a for a in x for _ in range(m)]], unions
    if kind in (Kind.BN, Kind.PRELU, Kind.PASS):
        if len(x) != c_out:
            raise _Unsupported("channel count changes")
        if kind is not Kind.PASS:  # per-channel weights
            _sink(g, node, 0, x, unions)
        return [list(x)], unions
    if kind in (Kind.FLATTEN, Kind.RESHAPE):
        return _reshape_rule(node, inp, out)
    raise _Unsupported(node.reason or "not handled")


def _rule(g: ChannelGraph, node: GraphNode) -> Rule:
    """Output atoms and the unions a node implies; raises _Unsupported without side effects."""
    ins = [g.tensors[k] for k in node.inputs]
    outs = [g.tensors[k] for k in node.outputs]
    if any(t.channels is None for t in outs) or len(outs) != 1:
        raise _Unsupported("output without a static channel axis")
    out = outs[0]
    assert out.channels is not None
    if node.kind is Kind.MERGE:
        return _merge_rule(ins, out.channels)
    if any(t.atoms is None for t in ins) or not ins:
        raise _Unsupported("input without a static channel axis")
    if node.kind is Kind.CONCAT:
        return _concat_rule(node, ins, out)
    if len(ins) != 1:
        raise _Unsupported(f"{len(ins)} tensor inputs")
    return _one_input_rule(g, node, ins[0], out)


def _apply(g: ChannelGraph, node: GraphNode) -> bool:
    """Follow the node's rule; when it cannot, False with the node marked UNSUPPORTED."""
    try:
        out_atoms, unions = _rule(g, node)
    except _Unsupported as exc:
        node.kind, node.reason = Kind.UNSUPPORTED, str(exc)
        return False
    for a, b in unions:
        g.union(a, b)
    for k, atoms in zip(node.outputs, out_atoms, strict=True):
        g.tensors[k].atoms = atoms
        if node.reason:  # a producer whose activation mixes its own outputs
            g.fix(atoms, f"{node.name}: {node.reason}")
    return True


def _keep_whole(g: ChannelGraph, node: GraphNode) -> None:
    """Pin the channels a node feeds on; its outputs get fresh pinned atoms."""
    logger.debug("kept whole: %s (%s): %s", node.name, node.type_name, node.reason)
    why = f"feeds {node.name} ({node.type_name}: {node.reason})"
    for k in node.inputs:
        g.fix(g.tensors[k].atoms, why)
    for k in node.outputs:
        t = g.tensors[k]
        t.atoms = g.new_atoms(t.channels, fixed="unsupported output") if t.channels else None


def analyse(g: ChannelGraph) -> None:
    """Tag every tensor's channels with atoms and union the ones that must go together."""
    for k in g.input_keys:
        t = g.tensors[k]
        t.atoms = g.new_atoms(t.channels, fixed="model input") if t.channels is not None else None
    for node in g.nodes:
        rank = len(g.tensors[node.inputs[0]].shape) if node.inputs else 0
        node.kind, node.reason = classify(node, rank)
        if node.kind is Kind.UNSUPPORTED or not _apply(g, node):
            _keep_whole(g, node)
    for k in g.output_keys:
        g.fix(g.tensors[k].atoms, "model output")
