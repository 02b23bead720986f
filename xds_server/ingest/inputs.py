"""What the controller's pipeline takes in, and what translation reads besides the registry.

Every input reaches the cache the same way: it is queued as a typed value
(:data:`Input`), the controller's loop takes every input waiting as one batch, folds each
with the handler of its type, translates once and applies to the cache once. Registry
updates (:class:`~xds_server.ingest.registry.Reset`,
:class:`~xds_server.ingest.registry.Changes`) come from the registry adapter; the others
are pushed by the services that produce them (:class:`HealthVerdicts` from HDS,
:class:`DnsAnswers` from the resolver).

A new input (certificates, policies) is a new frozen value here, a member of
:data:`Input`, a handler in the controller that folds it into :class:`Inputs` (what
translation reads) and names what to translate again, and a producer that calls
``Controller.submit``.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Protocol

from xds_server.ingest.registry import RegistryUpdate
from xds_server.model import ServiceRef
from xds_server.translate.inputs import (
    NO_INPUTS,
    EndpointHealth,
    Inputs,
    Resolver,
    WorkloadCertificate,
)

__all__ = [
    "NO_INPUTS",
    "AddressSource",
    "Certificates",
    "DnsAnswers",
    "HealthVerdicts",
    "Input",
    "Inputs",
    "Resolver",
]


@dataclass(frozen=True, slots=True)
class HealthVerdicts:
    """Aggregated endpoint health changed: ``health`` is every service's, ``changed`` the
    services whose verdicts moved (their assignments are translated again)."""

    health: EndpointHealth
    changed: Set[ServiceRef]


@dataclass(frozen=True, slots=True)
class DnsAnswers:
    """The addresses (or the error) of these endpoint names changed."""

    names: Set[str]


@dataclass(frozen=True, slots=True, repr=False)
class Certificates:
    """The workload certificates served changed: ``by_cluster`` is every connected node
    cluster's (its identity's certificate), ``bundle_pem`` the trust bundle."""

    by_cluster: Mapping[str, WorkloadCertificate]
    bundle_pem: bytes

    def __repr__(self) -> str:
        # Never the keys: inputs end up in logs.
        return f"Certificates({len(self.by_cluster)} node clusters)"


Input = RegistryUpdate | HealthVerdicts | DnsAnswers | Certificates
"""Anything the controller's pipeline takes."""


class AddressSource(Protocol):
    """Where endpoint names get their addresses (``adapters.dns.DnsCache``): answers so far
    without blocking; the composition root builds it and passes its changes in as
    :class:`DnsAnswers`."""

    def lookup(self, name: str) -> tuple[str, ...]:
        """Addresses known for ``name`` now (empty while unresolved; queues it)."""
        ...

    def error(self, name: str) -> str | None:
        """Why ``name`` has no addresses, once a lookup failed."""
        ...
