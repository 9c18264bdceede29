"""The channel-dependency graph of a Keras 3 functional model: its data types and their union-find.

Every position on a tensor's channel (last) axis is tagged with a channel *atom*; the rules module
says how each layer creates, passes or couples atoms, and trace builds the graph from a model.
Atoms in one union-find class must be removed together. Anything the graph cannot follow pins its
channels: they are kept whole and reported, never guessed.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)


class PruningError(EdgegapError, ValueError):
    """The model or the request cannot be pruned as asked; the message says what to do."""


class Kind(str, Enum):
    """Which channel rule a node follows; the rules module decides and applies it."""

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

    def readers(self) -> dict[str, list[GraphNode]]:
        """Each tensor's key -> the nodes that read it, in graph order."""
        out: dict[str, list[GraphNode]] = {}
        for n in self.nodes:
            for k in n.inputs:
                out.setdefault(k, []).append(n)
        return out

    def calls(self) -> Counter[int]:
        """How many times each layer is called: more than once for a shared layer."""
        return Counter(n.layer_id for n in self.nodes)

    @property
    def unsupported(self) -> list[GraphNode]:
        return [n for n in self.nodes if n.kind is Kind.UNSUPPORTED]


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
