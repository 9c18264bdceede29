"""Which channel classes to remove: a uniform or global ratio, per-layer overrides, a minimum kept
per group, protected layers, and the MAC count the result will have."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.pruning.graph import ChannelGraph, PruningError, protect
from converter.pruning.groups import ChannelGroup, channel_groups
from converter.pruning.importance import importance
from converter.pruning.macs import graph_macs
from converter.pruning.trace import build_graph

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
    round_to: int = 1  # kept counts were rounded to multiples of this

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
                rounding = (
                    f" or rounding to multiples of {self.round_to}" if self.round_to > 1 else ""
                )
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
            own = (
                {why for why in set().union(*(fixed.get(r, set()) for r in roots)) if n.name in why}
                if roots
                else set()
            )
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


def _exact_keep(grp: ChannelGroup, ratio: float, min_channels: int) -> int:
    keep = grp.size - math.floor(ratio * grp.size + 1e-9)
    return max(keep, min(min_channels, grp.size), grp.size - len(grp.prunable))


def _round_keeps(
    groups: Sequence[ChannelGroup],
    keeps: Mapping[int, int],
    cost: Mapping[int, int],
    min_channels: int,
    round_to: int,
) -> dict[int, int]:
    """Kept counts as multiples of `round_to`. Every group is rounded up first; then, where a
    channel costs the most MACs (`cost`), groups are rounded down instead while that brings the
    total removed closer to what was asked. Rounding up alone would remove less than asked."""
    out: dict[int, int] = {}
    down: dict[int, int] = {}
    for grp in groups:
        keep = keeps[grp.index]
        out[grp.index] = (
            keep if keep >= grp.size else min(grp.size, math.ceil(keep / round_to) * round_to)
        )
        lower = (keep // round_to) * round_to
        floor = max(round_to, min(min_channels, grp.size), grp.size - len(grp.prunable))
        if floor <= lower < out[grp.index]:
            down[grp.index] = lower
    asked, kept = sum(keeps.values()), sum(out.values())
    for index in sorted(down, key=lambda i: -cost.get(i, 0)):
        lowered = kept - (out[index] - down[index])
        if abs(lowered - asked) < abs(kept - asked):
            out[index], kept = down[index], lowered
    return out


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
        self._cost: dict[int, int] | None = None

    @property
    def channel_cost(self) -> dict[int, int]:
        """MACs one channel class of each group costs: what removing it alone would save."""
        if self._cost is None:
            plan = PrunePlan(self.graph, self.groups)
            dense = plan.dense_macs
            self._cost = {}
            for grp in self.groups:
                if grp.prunable:
                    plan.removed = {grp.prunable[0]}
                    self._cost[grp.index] = dense - plan.predicted_macs
        return self._cost

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
        own ratio. No group keeps fewer than min_channels. With round_to, kept counts are
        multiples of it, rounded so the total removed stays closest to what was asked."""
        if not 0 <= ratio < 1:
            raise PruningError(f"channel ratio must be in [0, 1), got {ratio}")
        plan = PrunePlan(self.graph, self.groups, ratio=ratio, round_to=self.round_to)
        if ratio == 0 and not per_layer:
            return plan
        plan.scores = self.scores
        overrides = dict(per_layer or {})
        unknown = [n for n in overrides if not any(n in grp.producers for grp in self.groups)]
        if unknown:
            raise PruningError(
                f"per-layer ratio for unknown or non-prunable layer(s): {', '.join(unknown)}"
            )
        if self.mode == "uniform" or overrides:
            keeps = {}
            for grp in self.groups:
                r = max([overrides[p] for p in grp.producers if p in overrides], default=ratio)
                keeps[grp.index] = _exact_keep(grp, r, self.min_channels)
        else:
            _global(plan, ratio, self.min_channels)
            keeps = {
                grp.index: grp.size - sum(r in plan.removed for r in grp.roots)
                for grp in self.groups
            }
        if self.round_to > 1:
            keeps = _round_keeps(
                self.groups, keeps, self.channel_cost, self.min_channels, self.round_to
            )
        for grp in self.groups:  # the least important go; a global pick is kept where it fits
            ranked = sorted(
                grp.prunable, key=lambda root: (root not in plan.removed, plan.scores[root])
            )
            plan.removed.difference_update(grp.roots)
            plan.removed.update(ranked[: max(0, grp.size - keeps[grp.index])])
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


def _global(plan: PrunePlan, ratio: float, min_channels: int) -> None:
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
