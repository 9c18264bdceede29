"""Tracing a Keras 3 functional model into its channel-dependency graph.

The model's call graph is flattened into one topologically ordered node list (nested functional
and Sequential sub-models inlined, every layer given a unique name), then the rules module tags its
channels.
"""

from __future__ import annotations

import logging
from typing import Any

from converter.pruning.graph import ChannelGraph, GraphNode, GraphTensor, PruningError
from converter.pruning.rules import analyse

logger = logging.getLogger(__name__)


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
