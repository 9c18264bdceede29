"""The channel-dependency graph of a Keras 3 functional model.

Every position on a tensor's channel (last) axis is tagged with a channel *atom*. A convolution or
dense layer creates fresh atoms for its filters; channel-wise layers pass atoms through; adds and
multiplies union the atoms of their inputs; concatenations join atom lists; flatten tiles them.
Atoms in one union-find class must be removed together. Anything the graph cannot follow pins its
channels: they are kept whole and reported, never guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)


class PruningError(EdgegapError, ValueError):
    """The model or the request cannot be pruned as asked; the message says what to do."""


class Kind(str, Enum):
    CONV = "conv"  # Conv1D/2D/3D: new output atoms, consumes input atoms
    DENSE = "dense"
    DEPTHWISE = "depthwise"  # output atoms = input atoms, each repeated depth_multiplier times
    SEPARABLE = "separable"  # depthwise then pointwise: new output atoms
    BN = "batchnorm"  # per-channel weights, atoms pass through
    PRELU = "prelu"
    PASS = "pass"  # channel-wise, no per-channel weights: activations, pooling, padding, dropout
    MERGE = "merge"  # element-wise n-ary (Add, Multiply, ...): inputs' atoms are unioned
    CONCAT = "concat"
    FLATTEN = "flatten"  # Flatten or Reshape into one axis: atoms tiled over positions
    RESHAPE = "reshape"  # Reshape keeping the channel axis (e.g. (C,) -> (1, 1, C))
    UNSUPPORTED = "unsupported"


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


@dataclass
class GraphTensor:
    key: str
    shape: tuple[int | None, ...]
    atoms: list[int] | None = None  # one atom per channel position; None when opaque

    @property
    def channels(self) -> int | None:
        return self.shape[-1] if len(self.shape) >= 2 else None


@dataclass
class GraphNode:
    """One call of a layer or op, in topological order, with nested sub-models inlined."""

    name: str  # unique in the flattened graph
    op: Any
    knode: Any  # the keras Node: its arguments replay the call
    inputs: list[str]  # tensor keys, in the order of knode.arguments.keras_tensors
    outputs: list[str]
    kind: Kind = Kind.UNSUPPORTED
    reason: str = ""

    @property
    def layer_id(self) -> int:
        return id(self.op)

    @property
    def type_name(self) -> str:
        return type(self.op).__name__


class _Unsupported(Exception):
    pass


@dataclass
class ChannelGraph:
    """Nodes in topological order, tensors by key, and the channel atoms with their union-find."""

    model: Any
    nodes: list[GraphNode] = field(default_factory=list)
    tensors: dict[str, GraphTensor] = field(default_factory=dict)
    input_keys: list[str] = field(default_factory=list)
    output_keys: list[str] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    fixed: dict[int, set[str]] = field(default_factory=dict)  # atom -> why it cannot be removed
    origin: dict[int, tuple[str, int]] = field(default_factory=dict)  # atom -> (producer, filter)
    producer_atoms: dict[int, list[int]] = field(default_factory=dict)  # layer id -> its atoms
    sink_atoms: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)  # layer id -> unique name

    # union-find ---------------------------------------------------------------------------------
    def new_atoms(self, n: int, fixed: str | None = None) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        atoms = list(range(start, start + n))
        if fixed:
            for a in atoms:
                self.fixed[a] = {fixed}
        return atoms

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def fix(self, atoms: list[int] | None, why: str) -> None:
        for a in atoms or []:
            self.fixed.setdefault(a, set()).add(why)

    def classes(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for a in range(len(self.parent)):
            out.setdefault(self.find(a), []).append(a)
        return out

    def fixed_roots(self) -> dict[int, set[str]]:
        """Pinned channel classes with every reason that pins them."""
        out: dict[int, set[str]] = {}
        for a, why in self.fixed.items():
            out.setdefault(self.find(a), set()).update(why)
        return out

    # queries ------------------------------------------------------------------------------------
    def node(self, name: str) -> GraphNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def kept_positions(self, key: str, removed_roots: set[int]) -> list[int] | None:
        """Channel positions of a tensor that survive when the given atom classes are removed."""
        atoms = self.tensors[key].atoms
        if atoms is None:
            return None
        return [i for i, a in enumerate(atoms) if self.find(a) not in removed_roots]

    @property
    def unsupported(self) -> list[GraphNode]:
        return [n for n in self.nodes if n.kind is Kind.UNSUPPORTED]


# --------------------------------------------------------------------------------------------------
# Walking the Keras graph


def _functional_of(op: Any) -> Any | None:
    """The functional graph behind a Functional model or a built Sequential, else None."""
    from keras.src.models.functional import Functional

    if isinstance(op, Functional):
        return op
    from keras import Sequential

    if isinstance(op, Sequential):
        fn = getattr(op, "_functional", None)
        if fn is None:
            raise PruningError(f"Sequential model {op.name!r} is not built: give it an input shape first")
        return fn
    return None


def require_functional(model: Any) -> Any:
    import keras

    if not isinstance(model, keras.Model):
        raise PruningError(f"expected a keras.Model, got {type(model).__name__}")
    fn = _functional_of(model)
    if fn is None:
        raise PruningError(
            f"{type(model).__name__} is a subclassed keras.Model: its graph lives in Python code that "
            "cannot be traced, so channels cannot be followed. Rebuild it with the functional API "
            "(inputs = keras.Input(shape); outputs = your layers called on inputs; "
            "keras.Model(inputs, outputs)), or wrap its layers in a functional model; "
            "then prune that model"
        )
    return fn


def build_graph(model: Any) -> ChannelGraph:
    """Flatten the model's call graph (nested functional models inlined) and analyse its channels."""
    fn = require_functional(model)
    g = ChannelGraph(model=model)
    alias: dict[tuple[str, int], str] = {}
    used_names: dict[str, int] = {}

    def key(scope: str, kt: Any) -> str:
        return alias.get((scope, id(kt))) or f"{scope}#{id(kt)}"

    def tensor(k: str, kt: Any) -> None:
        if k not in g.tensors:
            g.tensors[k] = GraphTensor(k, tuple(kt.shape))

    def unique_name(op: Any, prefix: str) -> str:
        if id(op) in g.names:
            return g.names[id(op)]
        name = op.name
        if name in used_names and used_names[name] != id(op):
            name = f"{prefix}_{op.name}" if prefix else op.name
            n = 1
            while name in used_names and used_names[name] != id(op):
                name, n = f"{prefix}_{op.name}_{n}", n + 1
        used_names[name] = id(op)
        g.names[id(op)] = name
        return name

    counter = [0]

    def walk(fmodel: Any, scope: str, prefix: str) -> None:
        from keras.layers import InputLayer

        for depth in sorted(fmodel._nodes_by_depth, reverse=True):
            for knode in fmodel._nodes_by_depth[depth]:
                op = knode.operation
                if isinstance(op, InputLayer):
                    continue
                in_keys = [key(scope, kt) for kt in knode.arguments.keras_tensors]
                inner = _functional_of(op)
                if inner is not None:
                    counter[0] += 1
                    sub = f"{scope}{op.name}@{counter[0]}/"
                    inner_inputs = list(inner.inputs)
                    if len(inner_inputs) != len(in_keys):
                        raise PruningError(f"cannot map the inputs of nested model {op.name!r}")
                    for ikt, k in zip(inner_inputs, in_keys, strict=True):
                        alias[(sub, id(ikt))] = k
                    walk(inner, sub, op.name)
                    for okt, inner_okt in zip(knode.outputs, inner.outputs, strict=True):
                        alias[(scope, id(okt))] = key(sub, inner_okt)
                    continue
                out_keys = [key(scope, kt) for kt in knode.outputs]
                for k, kt in zip(out_keys, knode.outputs, strict=True):
                    tensor(k, kt)
                g.nodes.append(GraphNode(unique_name(op, prefix), op, knode, in_keys, out_keys))

    for kt in fn.inputs:
        k = key("", kt)
        g.input_keys.append(k)
        tensor(k, kt)
    walk(fn, "", "")
    g.output_keys = [key("", kt) for kt in fn.outputs]
    _analyse(g)
    return g


# --------------------------------------------------------------------------------------------------
# Channel analysis


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


_PRODUCER_KINDS = {
    "Conv1D": Kind.CONV,
    "Conv2D": Kind.CONV,
    "Conv3D": Kind.CONV,
    "Dense": Kind.DENSE,
    "SeparableConv1D": Kind.SEPARABLE,
    "SeparableConv2D": Kind.SEPARABLE,
}


def classify(node: GraphNode, rank: int) -> tuple[Kind, str]:
    """Which channel rule a node follows; UNSUPPORTED with a reason when none applies safely."""
    import keras

    op, t = node.op, node.type_name
    module = type(op).__module__
    if not isinstance(op, keras.layers.Layer):
        if module.startswith("keras.src.ops.") and _non_tensor_args_scalar(node.knode):
            if t in _UNARY_OPS and len(node.inputs) == 1:
                return Kind.PASS, ""
            if t in _BINARY_OPS:
                return Kind.MERGE, ""
        return Kind.UNSUPPORTED, f"op {t} is not known to be channel-wise"
    if not module.startswith("keras.src.layers."):
        return Kind.UNSUPPORTED, f"custom layer {t}"
    if not _channels_last(op):
        return Kind.UNSUPPORTED, "channels_first data format"
    act = getattr(op, "activation", None)
    if act is not None and _activation_name(act) not in ELEMENTWISE_ACTIVATIONS:
        if t in _PRODUCER_KINDS and getattr(op, "groups", 1) == 1:
            return _PRODUCER_KINDS[t], f"activation {_activation_name(act)} mixes its outputs"
        return Kind.UNSUPPORTED, f"activation {_activation_name(act)} mixes channels"
    if t in ("Conv1D", "Conv2D", "Conv3D"):
        if op.groups != 1:
            return Kind.UNSUPPORTED, f"grouped convolution (groups={op.groups})"
        return Kind.CONV, ""
    if t == "Dense":
        return Kind.DENSE, ""
    if t in ("DepthwiseConv1D", "DepthwiseConv2D"):
        return Kind.DEPTHWISE, ""
    if t in ("SeparableConv1D", "SeparableConv2D"):
        return Kind.SEPARABLE, ""
    if t == "BatchNormalization":
        axis = op.axis if isinstance(op.axis, int) else None
        if axis not in (-1, rank - 1):
            return Kind.UNSUPPORTED, f"batch normalization over axis {op.axis}"
        return Kind.BN, ""
    if t == "PReLU":
        return Kind.PRELU, ""
    if t == "Activation" or t in _PASS_LAYERS:
        return Kind.PASS, ""
    if t == "Rescaling" and np.size(op.scale) == 1 and np.size(op.offset) == 1:
        return Kind.PASS, ""
    if t in _MERGE_LAYERS:
        return Kind.MERGE, ""
    if t == "Concatenate":
        return Kind.CONCAT, ""
    if t == "Flatten":
        return Kind.FLATTEN, ""
    if t == "Reshape":
        return Kind.RESHAPE, ""
    return Kind.UNSUPPORTED, f"{t} is not handled by the channel graph"


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


def _rule(g: ChannelGraph, node: GraphNode) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Output atoms and the unions a node implies; raises _Unsupported without side effects."""
    ins = [g.tensors[k] for k in node.inputs]
    outs = [g.tensors[k] for k in node.outputs]
    if any(t.channels is None for t in outs) or len(outs) != 1:
        raise _Unsupported("output without a static channel axis")
    out = outs[0]
    c_out = out.channels
    assert c_out is not None
    unions: list[tuple[int, int]] = []
    kind = node.kind
    if kind is Kind.MERGE:
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
    if any(t.atoms is None for t in ins) or not ins:
        raise _Unsupported("input without a static channel axis")
    x = ins[0].atoms
    assert x is not None
    if kind is Kind.CONCAT:
        axis = node.op.axis
        rank = len(out.shape)
        if axis in (-1, rank - 1):
            joined = [a for t in ins for a in (t.atoms or [])]
            return [joined], unions
        for t in ins[1:]:
            assert t.atoms is not None
            if len(t.atoms) != len(x):
                raise _Unsupported("concatenated inputs differ in channels")
            unions.extend(zip(x, t.atoms, strict=True))
        return [list(x)], unions
    if len(ins) != 1:
        raise _Unsupported(f"{len(ins)} tensor inputs")
    if kind in (Kind.CONV, Kind.DENSE, Kind.SEPARABLE):
        _sink(g, node, 0, x, unions)
        return [_producer_atoms(g, node, c_out)], unions
    if kind is Kind.DEPTHWISE:
        m = node.op.depth_multiplier
        if len(x) * m != c_out:
            raise _Unsupported("unexpected depthwise output width")
        _sink(g, node, 0, x, unions)
        return [[a for a in x for _ in range(m)]], unions
    if kind in (Kind.BN, Kind.PRELU):
        if len(x) != c_out:
            raise _Unsupported("channel count changes")
        _sink(g, node, 0, x, unions)
        return [list(x)], unions
    if kind is Kind.PASS:
        if len(x) != c_out:
            raise _Unsupported("channel count changes")
        return [list(x)], unions
    if kind in (Kind.FLATTEN, Kind.RESHAPE):
        in_shape = ins[0].shape
        if len(x) == c_out and (kind is Kind.RESHAPE or len(in_shape) == 2):
            return [list(x)], unions
        spatial = [d for d in in_shape[1:-1] if d is not None]
        positions = int(np.prod(spatial)) if len(spatial) == len(in_shape) - 2 else -1
        if len(out.shape) == 2 and positions > 0 and c_out == positions * len(x):
            node.kind = Kind.FLATTEN
            return [list(x) * positions], unions
        raise _Unsupported("reshape that moves the channel axis")
    raise _Unsupported(node.reason or "not handled")


def _analyse(g: ChannelGraph) -> None:
    for k in g.input_keys:
        t = g.tensors[k]
        t.atoms = g.new_atoms(t.channels, fixed="model input") if t.channels is not None else None
    for node in g.nodes:
        rank = len(g.tensors[node.inputs[0]].shape) if node.inputs else 0
        node.kind, node.reason = classify(node, rank)
        if node.kind is not Kind.UNSUPPORTED:
            try:
                out_atoms, unions = _rule(g, node)
            except _Unsupported as exc:
                node.kind, node.reason = Kind.UNSUPPORTED, str(exc)
            else:
                for a, b in unions:
                    g.union(a, b)
                for k, atoms in zip(node.outputs, out_atoms, strict=True):
                    g.tensors[k].atoms = atoms
                    if node.reason:  # a producer whose activation mixes its own outputs
                        g.fix(atoms, f"{node.name}: {node.reason}")
                continue
        logger.debug("kept whole: %s (%s): %s", node.name, node.type_name, node.reason)
        why = f"feeds {node.name} ({node.type_name}: {node.reason})"
        for k in node.inputs:
            g.fix(g.tensors[k].atoms, why)
        for k in node.outputs:
            t = g.tensors[k]
            t.atoms = g.new_atoms(t.channels, fixed="unsupported output") if t.channels else None
    for k in g.output_keys:
        g.fix(g.tensors[k].atoms, "model output")


def protect(g: ChannelGraph, names: list[str] | tuple[str, ...]) -> None:
    """Keep the output channels of the named layers whole. Unknown names are errors."""
    by_name: dict[str, list[GraphNode]] = {}
    for n in g.nodes:
        by_name.setdefault(n.name, []).append(n)
        by_name.setdefault(n.op.name, []).append(n)
    missing = [name for name in names if name not in by_name]
    if missing:
        import difflib

        hints = {m: difflib.get_close_matches(m, list(by_name), n=3) for m in missing}
        detail = "; ".join(f"{m!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for m, h in hints.items())
        raise PruningError(f"--protect: no layer named {detail}")
    for name in names:
        for n in by_name[name]:
            for k in n.outputs:
                g.fix(g.tensors[k].atoms, f"protected ({name})")

