"""``meshd``: the control plane process (flags and environment variables: ``meshd --help``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from adapters.etcd import EmbeddedEtcd, EtcdAccessError, EtcdRegistry, EtcdTls, EtcdUser
from xds_server.admin.auth import Authenticator, load_tokens
from xds_server.admin.replicas import check_replica_id
from xds_server.admin.server import check_exposure, is_loopback
from xds_server.app import MeshApp, MeshConfig
from xds_server.errors import ValidationError
from xds_server.identity.ca import CaError, MeshCA
from xds_server.ingest.controller import COALESCE_S
from xds_server.listen import ListenError, check_free, parse_listen
from xds_server.model.identity import DEFAULT_TRUST_DOMAIN, check_trust_domain
from xds_server.model.join_token import TOKENS_DIR
from xds_server.server.heap_trim import pin_mmap_threshold
from xds_server.stream_limits import DEFAULT_SHARED_WIRE_MB, StreamLimits

log = logging.getLogger("meshd")

ETCD_WAIT_NOTICE = 1.0
"""Seconds without a connection to etcd before meshd says it is waiting for it."""
ETCD_WAIT_REPEAT = 30.0
"""Seconds between two reminders while etcd still does not answer."""
_REFUSED_POLL = 0.1  # seconds between two looks, while starting, at whether etcd refused meshd

GC_YOUNG_THRESHOLD = 50_000
"""Net new container objects that trigger a young-generation collection (Python's default
is 700). A push to many streams keeps a great many short-lived objects alive at once
(coroutine frames, futures, responses), so at 700 the collector runs over and over during
a push, each pass promoting what was in flight to older generations, which later full
passes must scan again. At 50,000 it runs when the live heap really grows; reference
counting still frees everything acyclic at once."""


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(name, default)


MIN_CERT_TTL_S = 300.0
"""The shortest workload certificate lifetime meshd accepts (a proxy must get a new one
well before expiry, at half-life, even when meshd restarts meanwhile)."""

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(p: argparse.ArgumentParser, flag: str, text: str) -> float:
    """``90s``, ``5m``, ``24h`` in seconds; exit 2 naming the flag otherwise."""
    unit = _UNITS.get(text[-1:])
    try:
        if unit is None:
            raise ValueError(text)
        value = float(text[:-1]) * unit
    except ValueError:
        p.error(f"{flag} must be a duration like 30s, 5m or 24h, got {text!r}")
    return value


def _operator_ca(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    """The ``--ca-cert``/``--ca-key`` pair read and checked (CaError, OSError otherwise)."""
    if not args.ca_cert:
        return None
    pair = Path(args.ca_cert).read_bytes(), Path(args.ca_key).read_bytes()
    MeshCA(*pair, args.trust_domain)  # refuse a non-CA or a mismatched key before starting
    return pair


_SAFEGUARDS = (
    ("--xds-auth", "required", "every ADS/HDS/LRS stream must present a join token"),
    ("--xds-tls", "on", "serve xDS and the admin API over TLS with a certificate of the mesh CA"),
)
"""The xDS safeguards (see :func:`xds_exposure`): flag, its value when on (else ``off``),
what it does. Each has an environment variable, ``MESHD_`` and its name."""


_LIMITS = StreamLimits()
_XDS_LIMITS: tuple[tuple[str, type[int] | type[float], int | float, str], ...] = (
    (
        "--xds-max-names",
        int,
        _LIMITS.max_names,
        "resource names one xDS stream may subscribe to, per type",
    ),
    (
        "--xds-max-streams-per-peer",
        int,
        _LIMITS.max_streams_per_peer,
        "open ADS, HDS and LRS streams from one IP address",
    ),
    (
        "--xds-request-rate",
        float,
        _LIMITS.request_rate,
        "requests per second one xDS stream may send; a stream over it is paced, not ended",
    ),
    (
        "--xds-request-burst",
        int,
        _LIMITS.request_burst,
        "requests one xDS stream may send at once above --xds-request-rate",
    ),
    (
        "--xds-max-queued-responses",
        int,
        _LIMITS.max_queued_responses,
        "responses waiting for a client that does not read them before its stream is ended",
    ),
    (
        "--xds-shared-cache-mb",
        int,
        DEFAULT_SHARED_WIRE_MB,
        "MB of encoded responses kept to share between streams",
    ),
)
"""The per-client limits of the xDS port (see docs/xds.md, Limits): flag, type, default,
what it bounds. Each has an environment variable, ``MESHD_`` and its name."""


_ETCD_ACCESS = (
    ("--etcd-cacert", "PEM file of the CA(s) etcd's certificate must chain to (TLS to etcd)"),
    ("--etcd-cert", "PEM file of meshd's client certificate for etcd (with --etcd-key)"),
    ("--etcd-key", "PEM file of its private key"),
    ("--etcd-user", "etcd user name (the password comes from --etcd-password-file)"),
    ("--etcd-password-file", "file holding the etcd user's password (one line)"),
)
"""How meshd reaches an etcd cluster with TLS and authentication: etcdctl's flags (the
password only ever from a file). Each has an environment variable, ``MESHD_`` and its name."""

_REFUSED_HINT = {
    "tls": "check --etcd-cacert, --etcd-cert and --etcd-key",
    "auth": "check --etcd-user and --etcd-password-file",
    "permission": "the role of --etcd-user needs readwrite on the registry prefix",
}


def _read_flag_file(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


def _etcd_access(args: argparse.Namespace) -> tuple[EtcdTls | None, EtcdUser | None]:
    """The ``--etcd-*`` TLS files and user read and checked (ValueError naming the flag)."""
    tls = None
    if args.etcd_cacert or args.etcd_cert:
        tls = EtcdTls(
            ca=_read_flag_file("--etcd-cacert", args.etcd_cacert) if args.etcd_cacert else None,
            cert=_read_flag_file("--etcd-cert", args.etcd_cert) if args.etcd_cert else None,
            key=_read_flag_file("--etcd-key", args.etcd_key) if args.etcd_key else None,
        )
    user = None
    if args.etcd_user:
        raw = _read_flag_file("--etcd-password-file", args.etcd_password_file)
        # The file's one line; a final newline (as editors and echo leave it) is not part of it.
        password = raw.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
        if not password:
            raise ValueError(f"--etcd-password-file {args.etcd_password_file}: empty")
        user = EtcdUser(args.etcd_user, password)
    return tls, user


def _check_etcd_access(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The ``--etcd-*`` flags that go together, given together; exit 2 naming them."""
    given = [flag for flag, _ in _ETCD_ACCESS if getattr(args, _dest(flag))]
    if given and not args.etcd:
        p.error(f"{given[0]} needs --etcd (the embedded etcd has neither TLS nor users)")
    if bool(args.etcd_cert) != bool(args.etcd_key):
        p.error("--etcd-cert and --etcd-key go together")
    if args.etcd_user and ":" in args.etcd_user:
        # etcdctl's --user NAME:PASSWORD would put the password on the command line
        p.error("--etcd-user takes the name only: the password goes in --etcd-password-file")
    if bool(args.etcd_user) != bool(args.etcd_password_file):
        p.error("--etcd-user and --etcd-password-file go together")


def _limits(args: argparse.Namespace) -> StreamLimits:
    """The ``--xds-max-*`` flags as the limits in force."""
    return StreamLimits(
        max_names=args.xds_max_names,
        max_streams_per_peer=args.xds_max_streams_per_peer,
        request_rate=args.xds_request_rate,
        request_burst=args.xds_request_burst,
        max_queued_responses=args.xds_max_queued_responses,
    )


def _dest(flag: str) -> str:
    """The attribute argparse stores ``flag`` in: ``--xds-auth`` -> ``xds_auth``."""
    return flag.removeprefix("--").replace("-", "_")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="meshd",
        description="APG Service Mesh control plane: serves the etcd registry to Envoy over xDS.",
    )
    p.add_argument(
        "--etcd",
        default=_env("MESHD_ETCD", None),
        help="etcd endpoints host:port[,host:port] (env MESHD_ETCD); "
        "default: start an embedded etcd on a free loopback port, data in --data-dir",
    )
    for flag, what in _ETCD_ACCESS:
        env = "MESHD_" + _dest(flag).upper()
        p.add_argument(flag, default=_env(env, None), help=f"{what} (env {env})")
    p.add_argument("--prefix", default=_env("MESHD_PREFIX", "/mesh/"), help="registry key prefix")
    p.add_argument(
        "--xds", default=_env("MESHD_XDS", "127.0.0.1:18000"), help="ADS/HDS/LRS listen address"
    )
    p.add_argument(
        "--admin",
        default=_env("MESHD_ADMIN", "127.0.0.1:18001"),
        help="admin gRPC API listen address ('' to disable)",
    )
    p.add_argument(
        "--metrics",
        default=_env("MESHD_METRICS", "127.0.0.1:9102"),
        help="Prometheus /metrics listen address ('' to disable)",
    )
    p.add_argument(
        "--console",
        default=_env("MESHD_CONSOLE", None),
        help="web console listen address (off unless given); it reads and writes through the "
        "admin API with its tokens, and without --tokens listens on loopback only",
    )
    p.add_argument("--data-dir", default=_env("MESHD_DATA_DIR", ".meshd"), help="state directory")
    p.add_argument("--log-level", default=_env("MESHD_LOG_LEVEL", "info"), help="log level")
    p.add_argument(
        "--tokens",
        default=_env("MESHD_TOKENS", None),
        help="admin API bearer tokens file (YAML/JSON), read again on SIGHUP; without it the "
        "admin API is open and allowed on loopback only",
    )
    p.add_argument(
        "--report-interval-ms",
        type=int,
        default=int(_env("MESHD_REPORT_INTERVAL_MS", "10000") or 10000),
        help="how often Envoys send LRS load reports and HDS results (HDS: sooner when a "
        "service's health_check interval is shorter)",
    )
    p.add_argument(
        "--coalesce-window",
        type=float,
        default=float(_env("MESHD_COALESCE_WINDOW", None) or COALESCE_S),
        help="seconds: endpoint changes to a service whose endpoints went out less than this "
        "long ago (or are not answered yet by its proxies, up to 1 s) go out together after "
        "(a rolling deploy); the first change after a quiet spell goes at once; 0..10, 0: "
        f"never held (env MESHD_COALESCE_WINDOW; default {COALESCE_S:g})",
    )
    for flag, kind, default, what in _XDS_LIMITS:
        env = "MESHD_" + _dest(flag).upper()
        p.add_argument(
            flag,
            type=kind,
            default=kind(_env(env, str(default)) or default),
            help=f"{what} (env {env}; default {default})",
        )
    for flag, on, what in _SAFEGUARDS:
        env = "MESHD_" + _dest(flag).upper()
        p.add_argument(
            flag,
            choices=(on, "off"),
            default=_env(env, None),
            help=f"{what} (env {env}); default: {on}, but off (with a warning) on a loopback --xds",
        )
    p.add_argument(
        "--server-names",
        default=_env("MESHD_SERVER_NAMES", ""),
        help="comma-separated DNS names of meshd's serving certificate (env "
        "MESHD_SERVER_NAMES); default: localhost, meshd and the host name; the IPs it "
        "binds are added",
    )
    p.add_argument("--grace", type=float, default=2.0, help="seconds to close streams on stop")
    p.add_argument(
        "--replica-id",
        default=_env("MESHD_REPLICA_ID", None),
        help="this meshd among the replicas sharing its etcd, unique to each (env "
        "MESHD_REPLICA_ID); default: <host name>:<xds port>",
    )
    p.add_argument(
        "--advertise-admin",
        default=_env("MESHD_ADVERTISE_ADMIN", None),
        help="HOST:PORT where the other replicas reach this one's admin API (env "
        "MESHD_ADVERTISE_ADMIN); default: --admin, a wildcard host replaced by this host's "
        "address",
    )
    p.add_argument(
        "--trust-domain",
        default=_env("MESHD_TRUST_DOMAIN", DEFAULT_TRUST_DOMAIN),
        help="SPIFFE trust domain of workload identities (env MESHD_TRUST_DOMAIN)",
    )
    p.add_argument(
        "--ca-cert",
        default=_env("MESHD_CA_CERT", None),
        help="PEM file of an operator's CA or intermediate (then its chain) to sign with, "
        "instead of the mesh CA kept in etcd (env MESHD_CA_CERT; needs --ca-key)",
    )
    p.add_argument(
        "--ca-key", default=_env("MESHD_CA_KEY", None), help="its PEM key (env MESHD_CA_KEY)"
    )
    p.add_argument(
        "--cert-ttl",
        default=_env("MESHD_CERT_TTL", "24h"),
        help="lifetime of workload certificates, e.g. 24h, 90m (at least 5m; re-issued at "
        "half-life) (env MESHD_CERT_TTL)",
    )
    args = p.parse_args(argv)
    try:
        check_trust_domain(args.trust_domain, "--trust-domain")
    except ValidationError as exc:
        p.error(str(exc))
    args.cert_ttl_s = _duration(p, "--cert-ttl", args.cert_ttl)
    if args.cert_ttl_s < MIN_CERT_TTL_S:
        p.error(f"--cert-ttl must be at least 5m, got {args.cert_ttl!r}")
    if bool(args.ca_cert) != bool(args.ca_key):
        p.error("--ca-cert and --ca-key go together")
    _check_etcd_access(p, args)
    if not 0 <= args.coalesce_window <= 10:
        p.error(f"--coalesce-window must be 0..10 seconds, got {args.coalesce_window:g}")
    if not 100 <= args.report_interval_ms <= 3_600_000:
        p.error(f"--report-interval-ms must be 100..3600000, got {args.report_interval_ms}")
    for flag, on, _ in _SAFEGUARDS:
        value = getattr(args, _dest(flag))
        if value not in (None, on, "off"):  # (from the environment)
            p.error(f"{flag} must be {on} or off, got {value!r}")
    if not args.prefix.startswith("/") or not args.prefix.endswith("/"):
        p.error(f"--prefix must start and end with '/': {args.prefix!r}")
    for flag, value, optional in (
        ("--xds", args.xds, False),
        ("--admin", args.admin, True),
        ("--metrics", args.metrics, True),
        ("--console", args.console, True),
    ):
        if value or not optional:
            try:
                parse_listen(flag, value)
            except ListenError as exc:
                p.error(str(exc))  # exit 2, before anything starts
    if args.replica_id is None:
        args.replica_id = default_replica_id(args.xds)
    try:
        check_replica_id(args.replica_id)
    except ValueError as exc:
        p.error(f"--replica-id {args.replica_id!r}: {exc}")
    if args.advertise_admin is not None:
        try:
            if parse_listen("--advertise-admin", args.advertise_admin)[1] == 0:
                p.error("--advertise-admin needs the port the others dial, not 0")
        except ListenError as exc:
            p.error(str(exc))
    return args


async def run(args: argparse.Namespace) -> int:
    try:
        auth = load_tokens(args.tokens) if args.tokens else Authenticator(None)
        try:
            operator_ca = _operator_ca(args)
        except (CaError, OSError) as exc:
            raise ValueError(f"--ca-cert/--ca-key: {exc}") from None
        etcd_tls, etcd_user = _etcd_access(args)
        if args.admin:
            check_exposure(args.admin, auth, warn=False)  # refuse before starting etcd
        if args.console:
            if not args.admin:
                raise ValueError("--console needs the admin API (--admin): it serves through it")
            check_exposure(args.console, auth, warn=False)
        xds_auth = xds_exposure("--xds-auth", args.xds_auth, "required", args.xds)
        xds_tls = xds_exposure("--xds-tls", args.xds_tls, "on", args.xds)
        for flag, address in (
            ("--xds", args.xds),
            ("--admin", args.admin),
            ("--metrics", args.metrics),
            ("--console", args.console),
        ):
            if address:
                check_free(flag, address)  # (MeshApp checks again: the embedded etcd takes time)
    except (ValueError, ListenError) as exc:
        log.error("%s", exc)
        return 2
    warn_development(args.xds, xds_auth, xds_tls)
    embedded: EmbeddedEtcd | None = None
    endpoint = args.etcd
    if not endpoint:
        embedded = EmbeddedEtcd(Path(args.data_dir) / "etcd", name="meshd-embedded")
        await embedded.start()
        endpoint = embedded.endpoint
        log.info("started embedded etcd at %s (data in %s)", endpoint, embedded.data_dir)
    registry = EtcdRegistry(endpoint, args.prefix, tls=etcd_tls, user=etcd_user)
    tokens = None
    if xds_auth:
        tokens = EtcdRegistry(endpoint, args.prefix + TOKENS_DIR, tls=etcd_tls, user=etcd_user)
    config = MeshConfig(
        xds=args.xds,
        metrics=args.metrics or None,
        admin=args.admin or None,
        console=args.console or None,
        auth=auth,
        report_interval_ms=args.report_interval_ms,
        coalesce_window=args.coalesce_window,
        trust_domain=args.trust_domain,
        operator_ca=operator_ca,
        cert_ttl_s=args.cert_ttl_s,
        data_dir=args.data_dir,
        xds_auth=xds_auth,
        xds_tls=xds_tls,
        server_names=tuple(n.strip() for n in args.server_names.split(",") if n.strip()),
        xds_limits=_limits(args),
        shared_cache_mb=args.xds_shared_cache_mb,
        replica_id=args.replica_id,
        advertise_admin=args.advertise_admin,
    )
    app = MeshApp(registry, config, tokens=tokens)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.tokens:  # SIGHUP reads the tokens file again (a bad file keeps the old tokens)
        loop.add_signal_handler(signal.SIGHUP, auth.reload, args.tokens)
    try:
        try:
            if not await _start(app, registry, stop):
                log.info("stopped before the registry was read")
                return 0
        except (ListenError, CaError) as exc:
            log.error("%s", exc)
            return 2
        except EtcdAccessError as exc:
            log.error("etcd refused meshd: %s (%s)", exc, _REFUSED_HINT[exc.kind])
            return 2
        log.info(
            "meshd ready: replica=%s etcd=%s xds=%s admin=%s metrics=%s revision=%d",
            args.replica_id,
            endpoint,
            args.xds.rsplit(":", 1)[0] + f":{app.xds_port}",
            f"{args.admin.rsplit(':', 1)[0]}:{app.admin_port}" if args.admin else "off",
            f"{args.metrics.rsplit(':', 1)[0]}:{app.metrics_port}" if args.metrics else "off",
            app.revision,
        )
        await stop.wait()
        log.info("stopping: closing xDS streams")
    finally:
        await app.stop(args.grace)
        await registry.close()
        if tokens is not None:
            await tokens.close()
        if embedded is not None:
            embedded.stop()
    return 0


def default_replica_id(xds: str) -> str:
    """``<host name>:<xds port>``: unique per host and port, and the same again when the
    replica restarts there; a random id when the port is 0 (any free port)."""
    port = parse_listen("--xds", xds)[1]
    if port == 0:
        import uuid

        return uuid.uuid4().hex[:12]
    host = "".join(c for c in socket.gethostname() if c.isascii() and (c.isalnum() or c in ".-"))
    return f"{host or 'meshd'}:{port}"


def xds_exposure(flag: str, value: str | None, on: str, xds: str) -> bool:
    """Whether an xDS safeguard (``--xds-auth``, ``--xds-tls``) is on: by default only
    off a loopback ``--xds``, and never off elsewhere (ValueError: meshd exits 2), as the
    admin API refuses to run open beyond loopback."""
    if not is_loopback(xds):
        if value == "off":
            raise ValueError(
                f"{flag} off: --xds {xds} is not a loopback address, xDS there needs {flag} {on}"
            )
        return True
    return value is not None and value != "off"


def warn_development(xds: str, xds_auth: bool, xds_tls: bool) -> None:
    """Say what a loopback meshd without authentication or TLS leaves open."""
    if not xds_auth:
        log.warning(
            "--xds-auth off: any process on this host may claim any proxy identity on "
            "--xds %s (development mode)",
            xds,
        )
    if not xds_tls:
        log.warning("--xds-tls off: xDS on %s is plaintext (development mode)", xds)


async def _start(app: MeshApp, registry: EtcdRegistry, stop: asyncio.Event) -> bool:
    """``app.start()`` unless a signal comes first (False then). While etcd does not
    answer, say so: once after :data:`ETCD_WAIT_NOTICE`, then every :data:`ETCD_WAIT_REPEAT`."""
    loop = asyncio.get_running_loop()
    starting = asyncio.ensure_future(app.start())
    stopping = asyncio.ensure_future(stop.wait())
    notice_at = loop.time() + ETCD_WAIT_NOTICE
    waited = False
    try:
        while True:
            timeout = max(0.0, min(notice_at - loop.time(), _REFUSED_POLL))
            done, _ = await asyncio.wait(
                {starting, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if starting in done:
                starting.result()  # raises what start raised
                return True
            if stopping in done:
                return False
            if registry.refused is not None:
                # Credentials etcd refuses stay refused: say so once and stop, as for a
                # bad flag, rather than wait for etcd forever.
                raise registry.refused
            if loop.time() < notice_at:
                continue
            if not registry.reachable():
                where = ",".join(registry.endpoints)
                if waited:
                    log.warning("still waiting for etcd at %s", where)
                else:
                    why = f": {registry.last_error}" if registry.last_error else ""
                    log.warning("waiting for etcd at %s (it does not answer yet%s)", where, why)
                waited = True
            notice_at = loop.time() + (ETCD_WAIT_REPEAT if waited else ETCD_WAIT_NOTICE)
    finally:
        stopping.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting


def tune_collector() -> None:
    """Raise the young-generation threshold to :data:`GC_YOUNG_THRESHOLD` (never lower it)."""
    gen0, *older = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_YOUNG_THRESHOLD), *older)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    tune_collector()
    pin_mmap_threshold()
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
