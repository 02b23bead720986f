"""Endpoints whose DNS name does not resolve, reported like any rejected registry entry.

meshd resolves endpoint names itself (Envoy does not resolve names inside EDS). A name that
does not resolve makes each endpoint using it a problem of its key: listed by ``meshctl
errors`` (ListErrors), counted in ``meshd_registry_rejected_entries`` and written under
``status/errors/``. These problems are kept apart from the registry state's own (which
decide what is in force): they come and go with DNS answers, not with registry values.
No I/O happens here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from xds_server.model import Problem, ServiceRef
from xds_server.model.names import endpoint_key
from xds_server.model.view import ChangeSet

__all__ = ["DnsProblems"]


class DnsProblems:
    """The endpoint keys whose address names do not resolve, per service."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.problems: dict[str, Problem] = {}
        """Endpoint key -> why its name gives no address."""
        self._keys: dict[ServiceRef, set[str]] = {}

    def reconcile(
        self,
        refs: Iterable[ServiceRef],
        dns_names: Mapping[ServiceRef, Mapping[str, set[str]]],
        error: Callable[[str], str | None],
        addresses: Callable[[str], tuple[str, ...]],
        revision: int,
        changes: ChangeSet,
        registry_problems: Mapping[str, Problem],
    ) -> None:
        """Bring the problems of ``refs``' endpoints in line with the names they use now
        (``dns_names``: per service, name -> endpoint ids) and the resolver's ``error`` for
        each; record what was set or cleared in ``changes``. A key the registry state
        rejects for its own reason is never cleared from here."""
        for ref in refs:
            wanted: dict[str, Problem] = {}
            for name, ids in dns_names.get(ref, {}).items():
                why = error(name)
                if not why:
                    continue
                kept = bool(addresses(name))  # the last addresses it resolved to are served
                for endpoint_id in ids:
                    key = endpoint_key(self.prefix, ref, endpoint_id)
                    wanted[key] = Problem(key, "address", f"{name} {why}", revision, kept)
            for key in self._keys.pop(ref, set()) - wanted.keys():
                del self.problems[key]
                if key not in registry_problems:
                    changes.problems_cleared.add(key)
                    changes.problems_set.pop(key, None)
            for key, problem in wanted.items():
                old = self.problems.get(key)
                if old is None or (old.reason, old.last_good_kept) != (
                    problem.reason,
                    problem.last_good_kept,
                ):
                    self.problems[key] = problem
                    changes.problems_set[key] = problem
                    changes.problems_cleared.discard(key)
            if wanted:
                self._keys[ref] = set(wanted)
        # A key the registry state stopped rejecting may still not resolve: keep it listed.
        for key in changes.problems_cleared & self.problems.keys():
            changes.problems_cleared.discard(key)
            changes.problems_set[key] = self.problems[key]

    def merged(self, registry_problems: Mapping[str, Problem]) -> dict[str, Problem]:
        """Every rejected key: the registry state's problems, and these for the others."""
        if not self.problems:
            return dict(registry_problems)
        return {**self.problems, **registry_problems}
