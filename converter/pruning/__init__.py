"""Structured (channel) pruning for Keras 3 functional models.

graph holds the channel-dependency graph, trace builds it from a model (rules says how each
layer moves channels), groups couples filters, importance scores them, plan chooses what goes,
rebuild makes the smaller model, macs counts the cost, distill fine-tunes it against the original,
magnitude does the unstructured (zeroing) kind, api ties them together.
"""

from __future__ import annotations

from converter.pruning.api import PruneReport, cost_model_macs_per_ms, prune, prune_for_profile
from converter.pruning.distill import FineTuneResult, detection_distill_loss, distill
from converter.pruning.graph import ChannelGraph, Kind, PruningError
from converter.pruning.groups import ChannelGroup, channel_groups
from converter.pruning.macs import ModelCost, count_macs, model_cost
from converter.pruning.magnitude import LATENCY_NOTE, SparsityReport, magnitude_prune
from converter.pruning.plan import KeptWhole, Planner, PrunePlan, make_plan
from converter.pruning.rebuild import rebuild
from converter.pruning.trace import build_graph

__all__ = [
    "LATENCY_NOTE",
    "ChannelGraph",
    "ChannelGroup",
    "FineTuneResult",
    "KeptWhole",
    "Kind",
    "ModelCost",
    "Planner",
    "PruneReport",
    "PrunePlan",
    "PruningError",
    "SparsityReport",
    "build_graph",
    "channel_groups",
    "cost_model_macs_per_ms",
    "count_macs",
    "detection_distill_loss",
    "distill",
    "magnitude_prune",
    "make_plan",
    "model_cost",
    "prune",
    "prune_for_profile",
    "rebuild",
]
