"""Aggregate health reports into one verdict per endpoint. Pure (the clock comes in).

Reports come from the proxies that probe an endpoint (over HDS, possibly through
another meshd replica). Each checker runs Envoy's active health check with the
service's ``healthy_threshold`` / ``unhealthy_threshold``, so a report is already
the checker's debounced view. The aggregate then:

- counts only fresh reports (received within ``stale_after`` seconds); no fresh
  report means ``UNKNOWN`` (Envoy treats UNKNOWN as usable, so a mesh that lost
  its checkers keeps traffic flowing);
- lets the majority of fresh reports decide;
- keeps the previous verdict on a tie (hysteresis: two checkers that disagree do
  not make an endpoint flap).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Aggregator", "Report", "Status"]


class Status(enum.Enum):
    """Aggregated endpoint health, as ``meshctl health`` prints it."""

    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    UNKNOWN = "UNKNOWN"
    DRAINING = "DRAINING"


@dataclass(frozen=True, slots=True)
class Report:
    """One checker's latest view of one endpoint, received at ``at`` (seconds)."""

    reporter: str
    healthy: bool
    at: float


class Aggregator:
    """Holds the latest report per (endpoint, reporter) and the verdict per endpoint."""

    def __init__(self, stale_after: float) -> None:
        if stale_after <= 0:
            raise ValueError(f"stale_after must be > 0, not {stale_after}")
        self.stale_after = stale_after
        self._reports: dict[str, dict[str, Report]] = {}
        self._verdicts: dict[str, Status] = {}

    def record(self, target: str, reporter: str, healthy: bool, at: float) -> None:
        """Keep ``reporter``'s report on ``target`` if it is not older than the one held."""
        held = self._reports.setdefault(target, {})
        old = held.get(reporter)
        if old is None or old.at <= at:
            held[reporter] = Report(reporter, healthy, at)

    def replace_reporter(
        self, reporter: str, reports: Mapping[str, tuple[bool, float]], keep: Iterable[str] = ()
    ) -> None:
        """Set everything ``reporter`` says at once (a replica's published reports).

        Targets it no longer reports on lose its report, except those in ``keep``.
        """
        keep_set = set(keep)
        for target, held in self._reports.items():
            if reporter in held and target not in reports and target not in keep_set:
                del held[reporter]
        for target, (healthy, at) in reports.items():
            self.record(target, reporter, healthy, at)

    def forget_reporter(self, reporter: str) -> None:
        """Drop every report of a checker (it disconnected, or its lease expired)."""
        for held in self._reports.values():
            held.pop(reporter, None)

    def forget_target(self, target: str) -> None:
        """Drop an endpoint (removed from the registry)."""
        self._reports.pop(target, None)
        self._verdicts.pop(target, None)

    def reports(self, target: str) -> list[Report]:
        """The reports held on ``target``, newest first."""
        return sorted(self._reports.get(target, {}).values(), key=lambda r: -r.at)

    def fresh(self, target: str, now: float) -> list[Report]:
        """Reports on ``target`` received within ``stale_after`` of ``now``."""
        horizon = now - self.stale_after
        return [r for r in self._reports.get(target, {}).values() if r.at >= horizon]

    def verdict(self, target: str) -> Status:
        """The last verdict computed by :meth:`evaluate` (UNKNOWN before any)."""
        return self._verdicts.get(target, Status.UNKNOWN)

    def evaluate(self, now: float, targets: Iterable[str] | None = None) -> dict[str, Status]:
        """Recompute verdicts at ``now``; return the targets whose verdict changed."""
        changed: dict[str, Status] = {}
        for target in list(self._reports) if targets is None else targets:
            fresh = self.fresh(target, now)
            before = self._verdicts.get(target, Status.UNKNOWN)
            up = sum(1 for r in fresh if r.healthy)
            down = len(fresh) - up
            if not fresh:
                after = Status.UNKNOWN
            elif up > down:
                after = Status.HEALTHY
            elif down > up:
                after = Status.UNHEALTHY
            else:
                # A tie keeps the verdict; from UNKNOWN a tie proves nothing either way.
                after = before
            if after != before:
                changed[target] = after
                if after is Status.UNKNOWN:
                    self._verdicts.pop(target, None)
                else:
                    self._verdicts[target] = after
            if not self._reports.get(target):
                self._reports.pop(target, None)
        return changed

    def verdicts(self) -> dict[str, Status]:
        """Every endpoint with a known verdict."""
        return dict(self._verdicts)
