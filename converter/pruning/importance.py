"""How much each channel class matters: filter L1/L2 norm, BatchNorm |gamma|, or a first-order
Taylor estimate of the loss change on data. Scores are per class, so coupled filters add up."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from converter.pruning.graph import ChannelGraph, Kind, PruningError
from converter.pruning.groups import ChannelGroup

logger = logging.getLogger(__name__)

METHODS = ("l1", "l2", "bn", "taylor")


def _out_kernel(op: Any) -> np.ndarray:
    """The weight whose last axis indexes the layer's output filters."""
    kernel = op.pointwise_kernel if hasattr(op, "pointwise_kernel") else op.kernel
    return np.asarray(kernel)


def _norm_scores(g: ChannelGraph, groups: Sequence[ChannelGroup], p: int) -> dict[int, float]:
    ops = {n.name: n.op for n in g.nodes}
    norms: dict[str, np.ndarray] = {}
    scores: dict[int, float] = {}
    for grp in groups:
        for root in grp.roots:
            total = 0.0
            for name, j in grp.members[root]:
                if name not in norms:
                    k = _out_kernel(ops[name])
                    flat = np.abs(k.reshape(-1, k.shape[-1]))
                    norms[name] = flat.sum(0) if p == 1 else np.sqrt((flat**2).sum(0))
                total += float(norms[name][j])
            scores[root] = total
    return scores


def _bn_scores(g: ChannelGraph, groups: Sequence[ChannelGroup]) -> dict[int, float]:
    """Sum of |gamma| over the BatchNorms on each class; groups without BatchNorm fall back to L1."""
    gamma: dict[int, float] = {}
    seen: set[int] = set()
    for n in g.nodes:
        if n.kind is not Kind.BN or n.layer_id in seen or getattr(n.op, "gamma", None) is None:
            continue
        seen.add(n.layer_id)
        values = np.abs(np.asarray(n.op.gamma))
        for pos, atom in enumerate(g.sink_atoms[(n.layer_id, 0)]):
            root = g.find(atom)
            gamma[root] = gamma.get(root, 0.0) + float(values[pos])
    l1 = _norm_scores(g, groups, 1)
    scores: dict[int, float] = {}
    for grp in groups:
        use_bn = all(r in gamma for r in grp.roots)
        if not use_bn:
            logger.debug("group %s has no BatchNorm on every channel: L1 instead", grp.producers[0])
        for r in grp.roots:
            scores[r] = gamma[r] if use_bn else l1[r]
    return scores


def default_loss(outputs: list[Any], labels: Any) -> Any:
    """Cross-entropy for integer labels on a probability output, squared error otherwise; with no
    labels, the output energy, whose gradient tells which channels move the outputs most."""
    from keras import ops

    if labels is None:
        return sum(ops.mean(ops.square(o)) for o in outputs) * 0.5
    y = labels if isinstance(labels, (list, tuple)) else [labels]
    total = 0
    for o, t in zip(outputs, y, strict=False):
        t = ops.convert_to_tensor(t)
        if "int" in str(t.dtype) and len(t.shape) == len(o.shape) - 1:
            total += ops.mean(ops.sparse_categorical_crossentropy(t, o, from_logits=False))
        else:
            total += ops.mean(ops.square(o - ops.cast(t, o.dtype)))
    return total


_Slot = tuple[Any, int, int]  # (node, first variable index, variable count)


def _weight_slots(g: ChannelGraph) -> tuple[list[_Slot], list[Any]]:
    """Each weighted layer once, with where its trainable variables sit in one flat list."""
    weighted = [n for n in g.nodes if n.kind in (Kind.CONV, Kind.DENSE, Kind.SEPARABLE, Kind.BN)]
    seen: set[int] = set()
    layers = []
    for n in weighted:
        if n.layer_id not in seen:
            seen.add(n.layer_id)
            layers.append(n)
    variables: list[Any] = []
    slots: list[_Slot] = []
    for n in layers:
        vs = [v for v in n.op.trainable_weights]
        slots.append((n, len(variables), len(vs)))
        variables.extend(vs)
    return slots, variables


def _batch_labels(labels: Any, start: int, stop: int) -> Any:
    if labels is None:
        return None
    if isinstance(labels, (list, tuple)):
        return [lab[start:stop] for lab in labels]
    return labels[start:stop]


def _class_contributions(
    g: ChannelGraph, slots: list[_Slot], variables: list[Any], grads: list[Any]
) -> dict[int, float]:
    """Sum over each channel class's weights of w * dL/dw, for one batch."""
    contrib: dict[int, float] = {}
    for n, first, count in slots:
        per_out = None
        for v, gr in zip(
            variables[first : first + count], grads[first : first + count], strict=True
        ):
            if gr is None:
                continue
            prod = np.asarray(v) * np.asarray(gr)
            if n.kind is Kind.SEPARABLE and prod.ndim > 1 and v is not n.op.pointwise_kernel:
                continue  # depthwise weights belong to the input classes
            s = prod.reshape(-1, prod.shape[-1]).sum(0)
            per_out = s if per_out is None else per_out + s
        if per_out is None:
            continue
        atoms = (
            g.producer_atoms.get(n.layer_id)
            if n.kind is not Kind.BN
            else g.sink_atoms[(n.layer_id, 0)]
        )
        if atoms is None:
            continue
        for pos, atom in enumerate(atoms):
            root = g.find(atom)
            contrib[root] = contrib.get(root, 0.0) + float(per_out[pos])
    return contrib


def _taylor_scores(
    g: ChannelGraph,
    groups: Sequence[ChannelGroup],
    x: np.ndarray,
    labels: Any = None,
    batch_size: int = 16,
    loss_fn: Any = None,
) -> dict[int, float]:
    """(sum over a class's weights of w * dL/dw)^2, averaged over batches (first-order Taylor)."""
    import tensorflow as tf

    model = g.model
    loss_fn = loss_fn or default_loss
    slots, variables = _weight_slots(g)
    acc: dict[int, float] = {}
    batches = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yb = _batch_labels(labels, start, start + batch_size)
        with tf.GradientTape() as tape:
            out = model(xb, training=False)
            outs = (
                out
                if isinstance(out, (list, tuple))
                else list(out.values())
                if isinstance(out, dict)
                else [out]
            )
            loss = loss_fn(list(outs), yb)
        grads = tape.gradient(loss, [v.value if hasattr(v, "value") else v for v in variables])
        for root, value in _class_contributions(g, slots, variables, grads).items():
            acc[root] = acc.get(root, 0.0) + value * value
        batches += 1
    return {r: acc.get(r, 0.0) / max(batches, 1) for grp in groups for r in grp.roots}


def importance(
    g: ChannelGraph,
    groups: Sequence[ChannelGroup],
    method: str = "l1",
    data: np.ndarray | None = None,
    labels: Any = None,
    loss_fn: Any = None,
) -> dict[int, float]:
    """Score of every channel class in the groups; higher means keep."""
    if method == "l1":
        return _norm_scores(g, groups, 1)
    if method == "l2":
        return _norm_scores(g, groups, 2)
    if method == "bn":
        return _bn_scores(g, groups)
    if method == "taylor":
        if data is None:
            raise PruningError("--importance taylor needs data: pass --data DIR or file.npz")
        return _taylor_scores(g, groups, data, labels, loss_fn=loss_fn)
    raise PruningError(f"unknown importance {method!r}; choose one of {', '.join(METHODS)}")
