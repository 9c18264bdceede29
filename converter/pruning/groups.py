"""Channel groups: layers whose filters are coupled (through adds, multiplies, shared calls) and
the channel classes they must lose together."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from converter.pruning.graph import ChannelGraph

logger = logging.getLogger(__name__)


@dataclass
class ChannelGroup:
    """Producers that share channel classes. A class is one removable channel across all of them."""

    index: int
    producers: list[str]  # layer names, in graph order
    roots: list[int]  # one per channel class, ordered by the first producer's filter index
    fixed: dict[int, set[str]] = field(default_factory=dict)  # root -> why that class is kept
    members: dict[int, list[tuple[str, int]]] = field(default_factory=dict)  # root -> filters

    @property
    def size(self) -> int:
        return len(self.roots)

    @property
    def prunable(self) -> list[int]:
        return [r for r in self.roots if r not in self.fixed]

    def filters_of(self, producer: str, roots: list[int] | set[int]) -> list[int]:
        """Filter indices of one producer that belong to the given classes, sorted."""
        return sorted(j for r in roots for p, j in self.members.get(r, []) if p == producer)


def channel_groups(g: ChannelGraph) -> list[ChannelGroup]:
    """Partition every producer's filters into coupled groups, recording which classes are pinned."""
    classes = g.classes()
    fixed_roots = g.fixed_roots()
    order = {n.name: i for i, n in enumerate(g.nodes)}
    parent: dict[str, str] = {}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    members: dict[int, list[tuple[str, int]]] = {}
    for root, atoms in classes.items():
        filt = [g.origin[a] for a in atoms if a in g.origin]
        if not filt:
            continue
        members[root] = sorted(filt, key=lambda f: (order.get(f[0], 0), f[1]))
        for name, _ in filt:
            parent.setdefault(name, name)
        first = filt[0][0]
        for name, _ in filt[1:]:
            ra, rb = find(first), find(name)
            if ra != rb:
                parent[rb] = ra

    by_group: dict[str, list[int]] = {}
    for root, filt in members.items():
        by_group.setdefault(find(filt[0][0]), []).append(root)
    groups = []
    for roots in by_group.values():
        roots.sort(key=lambda r: (order.get(members[r][0][0], 0), members[r][0][1]))
        producers = sorted({p for r in roots for p, _ in members[r]}, key=lambda p: order.get(p, 0))
        groups.append(
            ChannelGroup(
                index=0,
                producers=producers,
                roots=roots,
                fixed={r: fixed_roots[r] for r in roots if r in fixed_roots},
                members={r: members[r] for r in roots},
            )
        )
    groups.sort(key=lambda grp: order.get(grp.producers[0], 0))
    for i, grp in enumerate(groups):
        grp.index = i
    return groups
