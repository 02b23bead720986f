"""Who checks what: spread endpoint health checks over the connected proxies. Pure.

Each target (an endpoint to probe) gets up to ``per_target`` distinct checkers
(connected Envoys). The choice is rendezvous hashing (highest random weight):
every (checker, target) pair has a stable pseudo-random score, and a target
takes its best-scoring checkers. A checker joining or leaving therefore moves
only the pairs it wins or held, not everybody's.

Two refinements on top of plain rendezvous:

- zone: a checker in the target's zone always ranks before one in another zone
  (probes stay local, and they see what local clients see);
- fair share: no checker takes more than ``ceil(targets * k / checkers)``
  pairs, so one proxy with a lucky hash does not probe half the mesh. A target
  whose preferred checkers are full moves down its ranking.

Targets are visited in the order of a hash of their key, so which target meets
a full checker is stable too and not biased by names.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Checker", "Target", "assign", "fair_share", "score"]

DEFAULT_CHECKERS_PER_TARGET = 3


@dataclass(frozen=True, slots=True, order=True)
class Checker:
    """A proxy that can run health checks: its node id and zone ('' when unknown)."""

    node_id: str
    zone: str = ""


@dataclass(frozen=True, slots=True, order=True)
class Target:
    """Something to probe: a stable key (``ns/service/endpoint-id``) and its zone."""

    key: str
    zone: str = ""


def score(node_id: str, key: str) -> int:
    """Stable rendezvous weight of a (checker, target) pair (same on every replica)."""
    digest = hashlib.blake2b(f"{node_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _order(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def fair_share(targets: int, checkers: int, per_target: int = DEFAULT_CHECKERS_PER_TARGET) -> int:
    """The most pairs one checker is given: ``ceil(targets * k / checkers)``."""
    if checkers <= 0:
        return 0
    k = min(per_target, checkers)
    return math.ceil(targets * k / checkers)


def assign(
    targets: Iterable[Target],
    checkers: Iterable[Checker],
    per_target: int = DEFAULT_CHECKERS_PER_TARGET,
) -> dict[str, frozenset[str]]:
    """Map every checker's node id to the target keys it probes.

    Every target gets ``min(per_target, len(checkers))`` distinct checkers.
    Deterministic: the same inputs give the same answer in any order, on any
    replica. Checkers with the same node id are one checker.
    """
    if per_target < 1:
        raise ValueError(f"per_target must be >= 1, not {per_target}")
    by_id: dict[str, Checker] = {}
    for c in checkers:
        by_id.setdefault(c.node_id, c)
    pool = sorted(by_id.values())
    unique: dict[str, Target] = {}
    for t in targets:
        unique.setdefault(t.key, t)
    out: dict[str, set[str]] = {c.node_id: set() for c in pool}
    if not pool or not unique:
        return {k: frozenset(v) for k, v in out.items()}
    k = min(per_target, len(pool))
    cap = fair_share(len(unique), len(pool), per_target)
    load: dict[str, int] = dict.fromkeys(out, 0)
    order = sorted(unique.values(), key=lambda t: (_order(t.key), t.key))
    for done, target in enumerate(order):
        remaining = len(order) - done  # targets still to place, this one included
        room = {node: cap - n for node, n in load.items()}
        # A complete bipartite placement of r targets x k distinct checkers fits residual
        # capacities c_i iff sum(min(c_i, r)) >= r * k. Picking a checker with c_i >= r keeps
        # that sum for the next target; any other pick spends one unit of the slack.
        slack = sum(min(c, remaining - 1) for c in room.values()) - (remaining - 1) * k
        ranked = sorted(
            pool,
            key=lambda c: (c.zone != target.zone, -score(c.node_id, target.key), c.node_id),
        )
        chosen: list[Checker] = []
        for c in ranked:
            if len(chosen) == k:
                break
            free = room[c.node_id]
            if free <= 0:
                continue
            if free < remaining:
                if slack <= 0:
                    continue
                slack -= 1
            chosen.append(c)
        for c in chosen:
            out[c.node_id].add(target.key)
            load[c.node_id] += 1
    return {node: frozenset(keys) for node, keys in out.items()}


def checkers_of(assignment: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
    """Invert an assignment: target key -> sorted node ids probing it."""
    inverse: dict[str, list[str]] = {}
    for node, keys in assignment.items():
        for key in keys:
            inverse.setdefault(key, []).append(node)
    for nodes in inverse.values():
        nodes.sort()
    return inverse
