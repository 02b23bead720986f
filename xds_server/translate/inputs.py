"""What translation reads besides the registry view: the latest value of each input that
is not the registry (health verdicts, DNS answers). The controller's pipeline
(``ingest/inputs.py``) folds its inputs into an :class:`Inputs`; translation only reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from xds_server.model import ServiceRef

__all__ = ["NO_INPUTS", "EndpointHealth", "Inputs", "Resolver", "WorkloadCertificate"]

Resolver = Callable[[str], tuple[str, ...]]
"""Addresses a name resolves to now (empty while unknown); never blocks."""

EndpointHealth = Mapping[ServiceRef, Mapping[str, int]]
"""Per service, endpoint id -> Envoy HealthStatus (HDS verdicts of every proxy)."""


class WorkloadCertificate(Protocol):
    """A workload certificate as translation reads it (``identity.ca.IssuedCertificate``)."""

    @property
    def chain_pem(self) -> bytes:
        """The certificate chain, leaf first (PEM)."""
        ...

    @property
    def key_pem(self) -> bytes:
        """Its private key (PEM): served to the proxy only, never dumped."""
        ...


def _no_dns(name: str) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class Inputs:
    """What translation reads besides the registry view: the latest value of each
    non-registry input. The controller's handlers replace it (one per batch at most);
    the translator only reads it."""

    health: EndpointHealth = field(default_factory=dict)
    """The latest :class:`HealthVerdicts` health."""
    addresses: Resolver = _no_dns
    """Addresses of endpoint names (the resolver's answers so far)."""
    certificates: Mapping[str, WorkloadCertificate] = field(default_factory=dict)
    """Node cluster -> the certificate of its identity, for the clusters with a proxy
    connected (the ``default`` SDS Secret each of them is served)."""
    trust_bundle: bytes = b""
    """The mesh's trust bundle (PEM; the ``ROOTCA`` Secret); empty: no Secrets at all."""


NO_INPUTS = Inputs()
"""No health verdicts and no DNS: what tools and tests that translate alone read."""
