"""The channel-dependency graph of a Keras 3 functional model: its data types and how it is built.

Every position on a tensor's channel (last) axis is tagged with a channel *atom*; the rules module
says how each layer creates, passes or couples atoms. Atoms in one union-find class must be removed
together. Anything the graph cannot follow pins its channels: they are kept whole and reported,
never guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from agent.errors import EdgegapError
from converter.pruning.rules import Kind, analyse

logger = logging.getLogger(__name__)


class PruningError(EdgegapError, ValueError):
    """The model or the request cannot be pruned as asked; the message says what to do."""


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
            raise PruningError(
                f"Sequential model {op.name!r} is not built: give it an input shape first"
            )
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


class _Flattener:
    """Walks a functional model's call graph into one node list, inlining nested functional
    models (their tensors aliased to the caller's) and giving every layer a unique name."""

    def __init__(self, g: ChannelGraph) -> None:
        self.g = g
        self.alias: dict[tuple[str, int], str] = {}
        self.used_names: dict[str, int] = {}
        self.nested = 0

    def key(self, scope: str, kt: Any) -> str:
        return self.alias.get((scope, id(kt))) or f"{scope}#{id(kt)}"

    def tensor(self, k: str, kt: Any) -> None:
        if k not in self.g.tensors:
            self.g.tensors[k] = GraphTensor(k, tuple(kt.shape))

    def unique_name(self, op: Any, prefix: str) -> str:
        names, used = self.g.names, self.used_names
        if id(op) in names:
            return names[id(op)]
        name = op.name
        if name in used and used[name] != id(op):
            name = f"{prefix}_{op.name}" if prefix else op.name
            n = 1
            while name in used and used[name] != id(op):
                name, n = f"{prefix}_{op.name}_{n}", n + 1
        used[name] = id(op)
        names[id(op)] = name
        return name

    def walk(self, fmodel: Any, scope: str, prefix: str) -> None:
        from keras.layers import InputLayer

        for depth in sorted(fmodel._nodes_by_depth, reverse=True):
            for knode in fmodel._nodes_by_depth[depth]:
                op = knode.operation
                if isinstance(op, InputLayer):
                    continue
                in_keys = [self.key(scope, kt) for kt in knode.arguments.keras_tensors]
                inner = _functional_of(op)
                if inner is not None:
                    self.inline(inner, knode, in_keys, scope)
                    continue
                out_keys = [self.key(scope, kt) for kt in knode.outputs]
                for k, kt in zip(out_keys, knode.outputs, strict=True):
                    self.tensor(k, kt)
                node = GraphNode(self.unique_name(op, prefix), op, knode, in_keys, out_keys)
                self.g.nodes.append(node)

    def inline(self, inner: Any, knode: Any, in_keys: list[str], scope: str) -> None:
        """A nested model's call: its inputs are the caller's tensors, its outputs alias back."""
        op = knode.operation
        self.nested += 1
        sub = f"{scope}{op.name}@{self.nested}/"
        inner_inputs = list(inner.inputs)
        if len(inner_inputs) != len(in_keys):
            raise PruningError(f"cannot map the inputs of nested model {op.name!r}")
        for ikt, k in zip(inner_inputs, in_keys, strict=True):
            self.alias[(sub, id(ikt))] = k
        self.walk(inner, sub, op.name)
        for okt, inner_okt in zip(knode.outputs, inner.outputs, strict=True):
            self.alias[(scope, id(okt))] = self.key(sub, inner_okt)


def build_graph(model: Any) -> ChannelGraph:
    """Flatten the model's call graph (nested functional models inlined) and analyse its channels."""
    fn = require_functional(model)
    g = ChannelGraph(model=model)
    flat = _Flattener(g)
    for kt in fn.inputs:
        k = flat.key("", kt)
        g.input_keys.append(k)
        flat.tensor(k, kt)
    flat.walk(fn, "", "")
    g.output_keys = [flat.key("", kt) for kt in fn.outputs]
    analyse(g)
    return g


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
        detail = "; ".join(
            f"{m!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for m, h in hints.items()
        )
        raise PruningError(f"--protect: no layer named {detail}")
    for name in names:
        for n in by_name[name]:
            for k in n.outputs:
                g.fix(g.tensors[k].atoms, f"protected ({name})")
