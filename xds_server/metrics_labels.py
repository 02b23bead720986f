"""Bounds on metric label values that clients choose.

A proxy names its own ``node.cluster`` and ``node.id``, and its load reports name
endpoints; every such string can end up as a Prometheus label value. Unbounded, one
client with long or ever-new names grows every scrape (and whoever renders it) without
limit, and a series kept after its proxy left keeps that memory for good. So:

- :func:`label_problem`: the check a stream applies to a client's string before it is
  used at all (the xDS server refuses a node cluster over :data:`MAX_LABEL_LENGTH`
  with ``INVALID_ARGUMENT`` naming the field);
- :func:`bounded`: a value over the limit, shortened with a marker and a digest (so two
  long names stay apart), for the places that must still show something;
- :class:`LabelGuard`: applied to everything ``/metrics`` renders: values over the
  length limit are shortened, and a family whose client-chosen labels
  (:data:`CLIENT_LABELS`) take more than ``max_values`` distinct values keeps the first
  ones and folds the rest into one ``__other__`` series (summed), counted in
  ``meshd_metrics_series_dropped_total{metric}``.

Pure, apart from the counters it is handed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import grpc
from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from xds_server.stream_auth import StreamRejected

__all__ = [
    "CLIENT_LABELS",
    "MAX_LABEL_LENGTH",
    "MAX_LABEL_VALUES",
    "OTHER",
    "LabelGuard",
    "bounded",
    "check_node_cluster",
    "label_problem",
]

MAX_LABEL_LENGTH = 128
"""Longest label value a client may choose (characters). A mesh's node clusters are
``name.ns`` or a gateway's name, well under it."""

MAX_LABEL_VALUES = 10_000
"""Distinct values of one client-chosen label in one metric family, per scrape."""

CLIENT_LABELS = frozenset({"node_cluster", "node_id", "source", "endpoint"})
"""Labels whose values come from what clients say (node, load reports)."""

OTHER = "__other__"
"""The label value of the series that holds what is over the count limit."""

_MARKER = "...#"  # then 8 hex digits of the whole value's digest


def label_problem(field: str, value: str, limit: int = MAX_LABEL_LENGTH) -> str | None:
    """Why ``value`` (the client's ``field``, e.g. ``node.cluster``) may not become a label
    value, or None when it may."""
    if len(value) > limit:
        return f"{field} is {len(value)} characters long, over the limit of {limit}"
    return None


class _Node(Protocol):
    @property
    def cluster(self) -> str: ...


def check_node_cluster(node: _Node) -> None:
    """Refuse (``INVALID_ARGUMENT``, naming ``node.cluster`` and the limit) a stream whose
    node (an Envoy ``Node``) has a cluster too long to be a label value: what the xDS
    servicers call on a request that names its node."""
    # (only its length is kept: the error's traceback must not hold a copy of the value)
    problem = label_problem("node.cluster", node.cluster)
    if problem is not None:
        raise StreamRejected(grpc.StatusCode.INVALID_ARGUMENT, problem)


def bounded(value: str, limit: int = MAX_LABEL_LENGTH) -> str:
    """``value`` itself, or (over ``limit`` characters) its start, ``...#`` and a digest of
    the whole, ``limit`` characters in all."""
    if len(value) <= limit:
        return value
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    keep = max(0, limit - len(_MARKER) - len(digest))
    return f"{value[:keep]}{_MARKER}{digest}"


class LabelGuard:
    """Bounds the label values of rendered metric families (see the module's docstring).

    ``truncated(metric, n)`` and ``dropped(metric, n)`` are told how many label values a
    family had shortened and how many of its series were folded into ``__other__``.
    """

    def __init__(
        self,
        truncated: Callable[[str, int], None],
        dropped: Callable[[str, int], None],
        *,
        max_length: int = MAX_LABEL_LENGTH,
        max_values: int = MAX_LABEL_VALUES,
    ) -> None:
        self._truncated = truncated
        self._dropped = dropped
        self.max_length = max_length
        self.max_values = max_values

    def metrics(self, families: Iterable[Metric]) -> Iterator[Metric]:
        """``families``, each bounded."""
        for family in families:
            yield self.family(family)

    def family(self, metric: Metric) -> Metric:
        """``metric`` itself when within bounds (the usual case, checked cheaply), else a
        copy with its long values shortened and its extra series folded."""
        samples = metric.samples
        limit = self.max_length
        long_values = any(len(v) > limit for s in samples for v in s.labels.values())
        client = CLIENT_LABELS.intersection(samples[0].labels) if samples else ()
        too_many = (
            any(
                len({s.labels[k] for s in samples if k in s.labels}) > self.max_values
                for k in client
            )
            if len(samples) > self.max_values
            else False
        )
        if not (long_values or too_many):
            return metric
        if long_values:
            shortened = 0
            out = []
            for s in samples:
                if any(len(v) > limit for v in s.labels.values()):
                    shortened += sum(1 for v in s.labels.values() if len(v) > limit)
                    s = s._replace(labels={k: bounded(v, limit) for k, v in s.labels.items()})
                out.append(s)
            samples = out
            self._truncated(metric.name, shortened)
        if too_many:
            samples = self._fold(metric, samples, sorted(client))
        copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
        copy.samples = samples
        return copy

    def _fold(self, metric: Metric, samples: list[Sample], client: list[str]) -> list[Sample]:
        """Keep the first ``max_values`` values of each client label; the series of the
        others become ``__other__`` series, summed (counts and rates add up)."""
        allowed: dict[str, set[str]] = {k: set() for k in client}
        kept: list[Sample] = []
        folded: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
        dropped: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for s in samples:
            labels = dict(s.labels)
            over = False
            for k in client:
                v = labels.get(k)
                if v is None:
                    continue
                seen = allowed[k]
                if v not in seen and len(seen) >= self.max_values:
                    labels[k] = OTHER
                    over = True
                else:
                    seen.add(v)
            if not over:
                kept.append(s)
                continue
            dropped.add((s.name, tuple(sorted(s.labels.items()))))
            key = (s.name, tuple(sorted(labels.items())))
            prior = folded.get(key)
            value = s.value + (prior.value if prior is not None else 0.0)
            folded[key] = s._replace(labels=labels, value=value)
        self._dropped(metric.name, len(dropped))
        return kept + list(folded.values())
