"""What benchmarks/update.py measured, printed: frames lost and stalls, where an update's time
goes, RSS across swaps, the fleet, and last the ratios (update / raw transfer, on loopback and
over a link; the longest gap across the swap)."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Any


def med(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Plan:
    """How much to run: the quick smoke run or the full one, with any counts given overriding."""

    mode: str
    trials: int
    swaps: int
    count: int
    stall_only: bool = False
    link_mbit: float = 0.0  # 0: no link trials

    @property
    def marks(self) -> tuple[int, ...]:
        """The swaps after which the agent's RSS is read: the 10th (if there are more) and the last."""
        return (10, self.swaps) if self.swaps > 10 else (self.swaps,)


@dataclass
class Trials:
    updates: list[dict[str, float]]  # the agent as configured by default (updates.weight_cache)
    baseline: list[dict[str, float]]  # updates.weight_cache: false (loads in the interpreter)
    raws: list[float]


@dataclass
class Measured:
    trials: dict[str, Trials]
    rss: dict[int, float]
    solo: list[float]
    fleet: dict[str, Any]
    link: dict[str, Trials]  # over the link proxy (updates and raws only)


def print_swaps(m: Measured, plan: Plan) -> None:
    """Frames lost and swap stalls, the weight cache (default) and the interpreter load."""
    for label, key in (("weight cache", "updates"), ("interpreter", "baseline")):
        every = [u for t in m.trials.values() for u in getattr(t, key)]
        print(f"frames lost during an update (publish .. activated + 1 s), {label}, all "
              f"{len(every)} trials: {sum(u['lost'] for u in every):.0f}; at the swap itself: "
              f"{sum(max(0, u['lost_at_swap']) for u in every):.0f} (goal 0)")  # fmt: skip
    for model, t in m.trials.items():
        for label, us in (("weight cache", t.updates), ("interpreter", t.baseline)):
            stall = [u["stall_s"] * 1e3 for u in us]
            print(f"swap stall, {model}, {label}: median {med(stall):.1f} ms, max "
                  f"{max(stall):.1f} ms over the usual gap of "
                  f"{med([u['usual_s'] for u in us]) * 1e3:.1f} ms (goal < 33 ms)")  # fmt: skip
    for model, t in m.trials.items():
        at = {k: med([u[k] for u in t.updates]) for k in ("available_s", "published_s",
              "verified_s", "activating_s", "update_s")}  # fmt: skip
        print(f"where a {model} update goes, weight cache, medians from the publish's start: the "
              f"agent sees the release {at['available_s']:.3f} s (publish returns "
              f"{at['published_s']:.3f}), verified in its store {at['verified_s']:.3f}, loading "
              f"{at['activating_s']:.3f}, active {at['update_s']:.3f}")  # fmt: skip
    if plan.stall_only:
        return
    marks, swaps = plan.marks, plan.swaps
    first, last = m.rss[marks[0]], m.rss[marks[-1]]
    print(f"agent RSS across {swaps} swaps: {first:.1f} MB after swap {marks[0]}, {last:.1f} MB "
          f"after swap {marks[-1]}: growth {last - first:+.1f} MB (goal < 10 MB)")  # fmt: skip


def print_fleet(m: Measured, plan: Plan) -> None:
    """The fleet's verification and load, and its ratio to one agent."""
    fleet, count, solo = m.fleet, plan.count, m.solo
    flight = "not reported" if fleet["inflight"] is None else f"{fleet['inflight']}"
    print(f"fleet: {fleet['verified']}/{count} agents activated the signed sha256; TensorFlow "
          f"loaded in {len(fleet['tf'])} agent(s); agents' RSS {fleet['rss'] / 1024:.1f} GB in all; "
          f"peak inflight ($SYS/broker/messages/inflight): {flight}; chunk subscriptions open "
          f"at most {8 * count} (window 8 x {count} agents)")  # fmt: skip
    cores = os.cpu_count() or 1
    print(f"fleet CPU from the publish to the last `activated`: agents {fleet['agents_cpu']:.2f} s "
          f"({fleet['agents_cpu'] / count:.3f} s each), broker {fleet['broker_cpu']:.2f} s; on "
          f"{cores} cores no less than {(fleet['agents_cpu'] + fleet['broker_cpu']) / cores:.2f} s "
          f"of wall time")  # fmt: skip
    print()
    print(f"fleet / one agent, {count} agents, 4 MB: {fleet['seconds'] / med(solo):.2f}  "
          f"(all active {fleet['seconds']:.3f} s, one agent {med(solo):.3f} s; goal <= 3)")  # fmt: skip


def print_ratios(m: Measured, plan: Plan, sizes: dict[str, int]) -> None:
    """Last: update / raw transfer, and the longest gap across the swap, interpreter / cache."""
    for model, t in m.trials.items():
        u, r = med([u["update_s"] for u in t.updates]), med(t.raws)
        b = med([u["update_s"] for u in t.baseline])
        print(f"publish-to-active / raw transfer, {model} ({sizes[model] / 2**20:.1f} MiB): "
              f"{u / r:.2f}  (update {u:.3f} s, raw {r:.3f} s, interpreter load {b:.3f} s; "
              f"medians of {plan.trials}{'; goal <= 1.0' if model == '30MB' else ''})")  # fmt: skip
    for model, t in m.link.items():
        u, r = med([u["update_s"] for u in t.updates]), med(t.raws)
        print(f"publish-to-active / raw transfer over a {plan.link_mbit:g} Mbit/s link per client, "
              f"{model}: {u / r:.2f}  (update {u:.3f} s, raw {r:.3f} s; medians of "
              f"{plan.trials})")  # fmt: skip
    for model, t in m.trials.items():
        new = med([u["stall_s"] + u["usual_s"] for u in t.updates]) * 1e3
        old = med([u["stall_s"] + u["usual_s"] for u in t.baseline]) * 1e3
        print(f"longest gap across the swap, {model}, interpreter / weight cache: {old / new:.2f}  "
              f"(interpreter {old:.1f} ms, weight cache {new:.1f} ms; medians of {plan.trials})")  # fmt: skip
