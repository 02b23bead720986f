"""meshd's own serving certificate (xDS and admin API over TLS), renewed at half-life.

gRPC asks each port's :meth:`ServingCertificate.fetcher` before every TLS handshake
(``grpc.dynamic_ssl_server_credentials``); it answers None (keep the current one) until
half the certificate's lifetime has passed, then issues a new one from the mesh CA. Open
connections keep the certificate they were made with; new ones get the new certificate.
So a meshd that runs longer than its certificate lives never serves an expired one.

The fetch runs on a gRPC thread: it is guarded by a lock, and issuing (one EC key and one
signature) happens at most once per half-life.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Sequence

import grpc

from xds_server.identity.ca import SERVER_LIFETIME, MeshCA

__all__ = ["ServingCertificate"]

Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ServingCertificate:
    """The certificate meshd presents, named by ``dns_names`` and ``ips``."""

    def __init__(
        self,
        ca: MeshCA,
        dns_names: Sequence[str],
        ips: Sequence[str],
        *,
        lifetime: datetime.timedelta = SERVER_LIFETIME,
        clock: Clock = _utcnow,
    ) -> None:
        self._ca, self._names, self._ips = ca, tuple(dns_names), tuple(ips)
        self._lifetime, self._clock = lifetime, clock
        self._lock = threading.Lock()
        self.renewals = 0
        """How many times the certificate was issued again."""
        self.chain_pem, self._config, self._renew_at = self._issue()

    def _issue(self) -> tuple[bytes, grpc.ServerCertificateConfiguration, datetime.datetime]:
        now = self._clock()
        chain, key = self._ca.issue_server_certificate(self._names, self._ips, now, self._lifetime)
        config = grpc.ssl_server_certificate_configuration([(key, chain)])
        return chain, config, now + self._lifetime / 2

    def current(self) -> grpc.ServerCertificateConfiguration:
        """The certificate configuration to present now, issued again first once half the
        current one's lifetime is past."""
        with self._lock:
            if self._clock() >= self._renew_at:
                self.chain_pem, self._config, self._renew_at = self._issue()
                self.renewals += 1
            return self._config

    def fetcher(self) -> Callable[[], grpc.ServerCertificateConfiguration | None]:
        """One port's fetch for gRPC: the current configuration when it is not the one this
        fetch handed out last (starting with the current one), else None (keep it)."""
        handed = self.current()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal handed
            latest = self.current()
            if latest is handed:
                return None
            handed = latest
            return latest

        return fetch

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials of one port, presenting this certificate, renewed as its
        :meth:`fetcher` says. One per port: gRPC gives the initial configuration to one port
        only, and each port must be told of a renewal once."""
        return grpc.dynamic_ssl_server_credentials(self.current(), self.fetcher())
