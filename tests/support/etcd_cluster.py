"""A real etcd cluster on loopback for the high-availability tests, and etcd TLS material.

- :class:`EtcdCluster`: three (or ``size``) EmbeddedEtcd members on free ports, started
  together; :meth:`EtcdCluster.leader` asks every running member (etcd's Maintenance
  Status, what ``etcdctl endpoint status`` shows) and names the one that leads; members are
  killed (SIGKILL), stopped and started again with their data, so quorum can be lost and
  come back. :meth:`EtcdCluster.etcdctl` runs the real etcdctl against the members.
- :func:`etcd_certificates`: a throwaway CA, a server certificate for ``127.0.0.1`` and
  ``localhost``, and a client certificate, written as PEM files (``cryptography``).
- :func:`etcdctl`, :func:`enable_auth`: the real etcdctl, and etcd's users and roles set up
  with it as an operator would.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from aetcd import rpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.etcd import EmbeddedEtcd, ServerTls, find_etcd_binary
from integration.harness import free_port
from tests.support.mtls_certs import make_ca

# Raft timing of test clusters: etcd's defaults. Shorter ones elect faster but call spurious
# elections when the machine is busy (the suite shares two cores with other work).
HEARTBEAT_MS = 100
ELECTION_MS = 1000


@dataclass(frozen=True)
class EtcdCertificates:
    """PEM files: ``ca`` signs ``server`` (127.0.0.1, localhost) and ``client``; ``other_ca``
    signs nothing meshd is given (a client trusting it must refuse the server)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path

    def server_tls(self) -> ServerTls:
        """etcd's side: its certificate, and client certificates required (of ``ca``)."""
        return ServerTls(self.server_cert, self.server_key, client_ca=self.ca)


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str, *, server: bool
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    # etcd's JSON gateway calls etcd's own gRPC with the server certificate as a client
    # certificate: with --client-cert-auth it must be good for both (as etcd's docs have it).
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    )
    if server:
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def etcd_certificates(directory: Path) -> EtcdCertificates:
    """Generate the CA, the server and client certificates and a stranger CA into
    ``directory`` (keys readable by the owner only)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_cert = make_ca("etcd test CA")
    other, _, _ = make_ca("another CA")
    server_cert, server_key = _leaf(ca_key, ca_cert, "etcd", server=True)
    client_cert, client_key = _leaf(ca_key, ca_cert, "meshd", server=False)
    files = {
        "ca.pem": ca.cert,
        "server.pem": server_cert,
        "server-key.pem": server_key,
        "client.pem": client_cert,
        "client-key.pem": client_key,
        "other-ca.pem": other.cert,
    }
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        if name.endswith("key.pem"):
            path.chmod(0o600)
    return EtcdCertificates(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server-key.pem",
        directory / "client.pem",
        directory / "client-key.pem",
        directory / "other-ca.pem",
    )


class EtcdCluster:
    """``size`` etcd members on loopback, one raft cluster; see the module docstring."""

    def __init__(
        self,
        base: Path,
        size: int = 3,
        *,
        certificates: EtcdCertificates | None = None,
        token: str = "mesh-ha-test",
    ) -> None:
        self.certificates = certificates
        names = [f"m{i}" for i in range(size)]
        ports = {name: (free_port(), free_port()) for name in names}
        peers = {name: f"http://127.0.0.1:{peer}" for name, (_, peer) in ports.items()}
        tls = certificates.server_tls() if certificates else None
        self.members = [
            EmbeddedEtcd(
                base / name,
                name=name,
                client_port=ports[name][0],
                peer_port=ports[name][1],
                peers=peers,
                cluster_token=token,
                heartbeat_ms=HEARTBEAT_MS,
                election_ms=ELECTION_MS,
                unsafe_no_fsync=True,
                auto_compaction_retention=None,
                tls=tls,
                metrics_port=free_port() if tls else 0,
                start_timeout=30.0,
            )
            for name in names
        ]

    @property
    def endpoints(self) -> str:
        """Every member's ``host:port``, comma-separated (what ``meshd --etcd`` takes)."""
        return ",".join(m.endpoint for m in self.members)

    def endpoints_of(self, members: Iterable[EmbeddedEtcd]) -> str:
        """Those members' endpoints, comma-separated, in the order given."""
        return ",".join(m.endpoint for m in members)

    @property
    def running(self) -> list[EmbeddedEtcd]:
        """The members whose process is alive."""
        return [m for m in self.members if m.running]

    async def start(self, members: Sequence[EmbeddedEtcd] | None = None) -> None:
        """Start ``members`` (default: all) together and wait until each is healthy (a
        member is healthy once a quorum is up and a leader elected)."""
        await asyncio.gather(*(m.start() for m in members or self.members))

    def stop(self) -> None:
        """Stop every member (SIGTERM). Idempotent."""
        for member in self.members:
            member.stop()

    async def __aenter__(self) -> EtcdCluster:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def _channel(self, member: EmbeddedEtcd) -> grpc.aio.Channel:
        certs = self.certificates
        if certs is None:
            return grpc.aio.insecure_channel(member.endpoint)
        credentials = grpc.ssl_channel_credentials(
            certs.ca.read_bytes(), certs.client_key.read_bytes(), certs.client_cert.read_bytes()
        )
        return grpc.aio.secure_channel(member.endpoint, credentials)

    async def status(self, member: EmbeddedEtcd) -> rpc.StatusResponse | None:
        """The member's Maintenance Status (its id, the leader it knows), None if it does
        not answer within a second."""
        channel = self._channel(member)
        try:
            response: rpc.StatusResponse = await rpc.MaintenanceStub(channel).Status(
                rpc.StatusRequest(), timeout=1.0
            )
            return response
        except grpc.aio.AioRpcError:
            return None
        finally:
            await channel.close()

    async def leader(self) -> EmbeddedEtcd | None:
        """The running member that leads now, as the members themselves say."""
        for member in self.running:
            status = await self.status(member)
            if status is not None and status.leader and status.leader == status.header.member_id:
                return member
        return None

    async def wait_leader(
        self, timeout: float = 15.0, *, other_than: EmbeddedEtcd | None = None
    ) -> tuple[EmbeddedEtcd, float]:
        """The leader once there is one (not ``other_than``), and ``time.monotonic()`` of
        when it was seen first (polled every 20 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            leader = await self.leader()
            if leader is not None and leader is not other_than:
                return leader, time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(f"no etcd leader within {timeout} s (other than {other_than})")
            await asyncio.sleep(0.02)

    def etcdctl(
        self, *args: str, members: Iterable[EmbeddedEtcd] | None = None, user: str | None = None
    ) -> str:
        """Run the real etcdctl against ``members`` (default: all), with the client
        certificate when the cluster has TLS and ``--user NAME:PASSWORD`` when given."""
        return etcdctl(
            [m.client_url for m in members or self.members],
            *args,
            certificates=self.certificates,
            user=user,
        )


def etcdctl(
    urls: Sequence[str],
    *args: str,
    certificates: EtcdCertificates | None = None,
    user: str | None = None,
) -> str:
    """Run the real etcdctl against ``urls``; its output, AssertionError with its error."""
    binary = str(Path(find_etcd_binary()).with_name("etcdctl"))
    cmd = [binary, f"--endpoints={','.join(urls)}", "--dial-timeout=3s", "--command-timeout=5s"]
    if certificates is not None:
        cmd += [f"--cacert={certificates.ca}", f"--cert={certificates.client_cert}"]
        cmd += [f"--key={certificates.client_key}"]
    if user:
        cmd.append(f"--user={user}")
    out = subprocess.run(
        [*cmd, *args],
        capture_output=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        timeout=20,
        check=False,
    )
    if out.returncode:
        raise AssertionError(f"etcdctl {' '.join(args)}: {out.stderr.decode()}")
    return out.stdout.decode()


def enable_auth(urls: Sequence[str], users: dict[str, tuple[str, str]]) -> None:
    """Turn etcd's authentication on, as an operator would with etcdctl: a ``root`` user
    (password ``root-pw``), and for each ``name -> (password, prefix)`` a user whose role
    may read and write that prefix."""
    etcdctl(urls, "user", "add", "root", "--new-user-password=root-pw")
    for name, (password, prefix) in users.items():
        role = f"{name}-role"
        etcdctl(urls, "role", "add", role)
        etcdctl(urls, "role", "grant-permission", role, "--prefix=true", "readwrite", prefix)
        etcdctl(urls, "user", "add", name, f"--new-user-password={password}")
        etcdctl(urls, "user", "grant-role", name, role)
    etcdctl(urls, "auth", "enable")
