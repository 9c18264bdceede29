"""Which channel classes to remove: a uniform or global ratio, per-layer overrides, a minimum kept
per group, protected layers, and the MAC count the result will have."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.pruning.graph import ChannelGraph, PruningError, build_graph, protect
from converter.pruning.groups import ChannelGroup, channel_groups
from converter.pruning.importance import importance
from converter.pruning.macs import graph_macs

logger = logging.getLogger(__name__)

MODES = ("uniform", "global")


@dataclass
class KeptWhole:
    """A layer whose output channels all survive, and why."""

    layer: str
    channels: int
    reason: str


@dataclass
class PrunePlan:
    graph: ChannelGraph
    groups: list[ChannelGroup]
    removed: set[int] = field(default_factory=set)  # removed class roots
    scores: dict[int, float] = field(default_factory=dict)
    ratio: float = 0.0
    round_to: int = 1  # kept counts were rounded up to multiples of this

    def kept(self, key: str) -> list[int] | None:
        return self.graph.kept_positions(key, self.removed)

    def channels(self, key: str) -> int | None:
        kept = self.kept(key)
        return None if kept is None else len(kept)

    @property
    def total_channels(self) -> int:
        """Channel classes over all groups, before anything is removed."""
        return sum(grp.size for grp in self.groups)

    @property
    def kept_channels(self) -> int:
        return self.total_channels - len(self.removed)

    @property
    def dense_macs(self) -> int:
        return graph_macs(self.graph)

    @property
    def predicted_macs(self) -> int:
        return graph_macs(self.graph, self.channels)

    def kept_filters(self, producer: str) -> list[int]:
        """Original filter indices of a producer that survive."""
        for grp in self.groups:
            if producer in grp.producers:
                return grp.filters_of(producer, [r for r in grp.roots if r not in self.removed])
        raise KeyError(producer)

    def kept_whole(self) -> list[KeptWhole]:
        """Producers that lose no filter although pruning was asked for, with the reason."""
        if not self.removed and self.ratio == 0:
            return []
        out = []
        for grp in self.groups:
            if any(r in self.removed for r in grp.roots):
                continue
            reasons = _main_reasons(set().union(*grp.fixed.values()) if grp.fixed else set())
            if len(grp.fixed) < grp.size:
                rounding = f" or rounding to multiples of {self.round_to}" if self.round_to > 1 else ""
                reasons.append(f"minimum channels{rounding}")
            for p in grp.producers:
                out.append(KeptWhole(p, len(grp.filters_of(p, grp.roots)), "; ".join(reasons)))
        return out

    def unsupported(self) -> list[KeptWhole]:
        """Layers the graph could not follow that pinned channels nothing else pins."""
        g = self.graph
        fixed = g.fixed_roots()
        out = []
        for n in g.unsupported:
            roots = {g.find(a) for k in n.inputs for a in (g.tensors[k].atoms or [])}
            own = {why for why in set().union(*(fixed.get(r, set()) for r in roots)) if n.name in why} if roots else set()
            pinned = sum(
                1
                for grp in self.groups
                for r in grp.roots
                if r in roots and not (fixed.get(r, set()) - own)
            )
            if pinned:
                out.append(KeptWhole(n.name, pinned, f"{n.type_name}: {n.reason}"))
        return out


def _main_reasons(reasons: set[str]) -> list[str]:
    """Model output and protection first: they explain the rest."""
    order = sorted(reasons, key=lambda r: (r != "model output", not r.startswith("protected"), r))
    if "model output" in reasons:
        return ["model output"]
    return order[:2]


def _keep_count(size: int, ratio: float, min_channels: int, round_to: int) -> int:
    keep = size - math.floor(ratio * size + 1e-9)
    keep = max(keep, min(min_channels, size))
    if round_to > 1:
        keep = min(size, int(math.ceil(keep / round_to) * round_to))
    return keep


class Planner:
    """Graph, groups and importance computed once; plans for any ratio drawn from them cheaply."""

    def __init__(
        self,
        model: Any,
        *,
        importance_method: str = "l1",
        mode: str = "uniform",
        min_channels: int = 8,
        round_to: int = 1,
        protected: Sequence[str] = (),
        data: np.ndarray | None = None,
        labels: Any = None,
        loss_fn: Any = None,
    ) -> None:
        if mode not in MODES:
            raise PruningError(f"unknown mode {mode!r}; choose {' or '.join(MODES)}")
        self.mode, self.min_channels, self.round_to = mode, min_channels, max(1, round_to)
        self.graph = build_graph(model)
        if protected:
            protect(self.graph, list(protected))
        self.groups = channel_groups(self.graph)
        self._importance = (importance_method, data, labels)
        self._loss_fn = loss_fn  # Taylor importance: the task's loss(outputs, labels)
        self._scores: dict[int, float] | None = None

    @property
    def scores(self) -> dict[int, float]:
        if self._scores is None:
            method, data, labels = self._importance
            self._scores = importance(
                self.graph, self.groups, method, data, labels, loss_fn=self._loss_fn
            )
        return self._scores

    def plan(self, ratio: float, per_layer: Mapping[str, float] | None = None) -> PrunePlan:
        """Remove `ratio` of the channels: from every group ("uniform"), or the least important
        overall, normalized within each group ("global"). `per_layer` maps a producer's name to its
        own ratio. No group keeps fewer than min_channels."""
        if not 0 <= ratio < 1:
            raise PruningError(f"channel ratio must be in [0, 1), got {ratio}")
        plan = PrunePlan(self.graph, self.groups, ratio=ratio, round_to=self.round_to)
        if ratio == 0 and not per_layer:
            return plan
        plan.scores = self.scores
        overrides = dict(per_layer or {})
        unknown = [n for n in overrides if not any(n in grp.producers for grp in self.groups)]
        if unknown:
            raise PruningError(f"per-layer ratio for unknown or non-prunable layer(s): {', '.join(unknown)}")
        if self.mode == "uniform" or overrides:
            for grp in self.groups:
                r = max([overrides[p] for p in grp.producers if p in overrides], default=ratio)
                keep = _keep_count(grp.size, r, self.min_channels, self.round_to)
                candidates = sorted(grp.prunable, key=lambda root: plan.scores[root])
                plan.removed.update(candidates[: max(0, grp.size - keep)])
        else:
            _global(plan, ratio, self.min_channels, self.round_to)
        logger.info(
            "plan: %d of %d channel classes removed; MACs %d -> %d",
            len(plan.removed),
            plan.total_channels,
            plan.dense_macs,
            plan.predicted_macs,
        )
        return plan


def make_plan(
    model: Any,
    ratio: float,
    *,
    importance_method: str = "l1",
    mode: str = "uniform",
    min_channels: int = 8,
    round_to: int = 1,
    protected: Sequence[str] = (),
    per_layer: Mapping[str, float] | None = None,
    data: np.ndarray | None = None,
    labels: Any = None,
) -> PrunePlan:
    """Plan the removal of `ratio` of the model's channels (see Planner.plan)."""
    planner = Planner(
        model,
        importance_method=importance_method,
        mode=mode,
        min_channels=min_channels,
        round_to=round_to,
        protected=protected,
        data=data,
        labels=labels,
    )
    return planner.plan(ratio, per_layer)


def _global(plan: PrunePlan, ratio: float, min_channels: int, round_to: int) -> None:
    budget = math.floor(ratio * plan.total_channels + 1e-9)
    ranked: list[tuple[float, int, ChannelGroup]] = []
    for grp in plan.groups:
        mean = float(np.mean([plan.scores[r] for r in grp.roots])) or 1.0
        ranked.extend((plan.scores[r] / mean, r, grp) for r in grp.prunable)
    ranked.sort(key=lambda t: t[0])
    left = {grp.index: grp.size for grp in plan.groups}
    for _, root, grp in ranked:
        if budget <= 0:
            break
        if left[grp.index] <= min(min_channels, grp.size):
            continue
        plan.removed.add(root)
        left[grp.index] -= 1
        budget -= 1
    if round_to > 1:
        for grp in plan.groups:
            removed = sorted((r for r in grp.roots if r in plan.removed), key=lambda r: -plan.scores[r])
            keep = grp.size - len(removed)
            target = min(grp.size, int(math.ceil(keep / round_to) * round_to))
            for r in removed[: target - keep]:
                plan.removed.discard(r)
