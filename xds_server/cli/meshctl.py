"""``meshctl``: the command-line client (``docs/admin-api.md``).

``bootstrap`` works offline; every other command talks to meshd's admin API
(``--admin HOST:PORT`` / ``MESHCTL_ADMIN``, token from ``--token`` / ``MESHCTL_TOKEN``;
both global flags work before or after the command name). Output: ``-o table`` (default,
for people), ``json`` (one document) or ``yaml``. Exit codes: 0 ok, 1 user or validation
error, 2 admin API unreachable or auth failure.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence

from xds_server.cli import ca as ca_commands
from xds_server.cli import commands, observed, policy
from xds_server.cli import tokens as token_commands
from xds_server.cli.bootstrap import bootstrap, render
from xds_server.listen import split_hostport


def _bootstrap(args: argparse.Namespace) -> int:
    addresses = []
    for item in args.xds.split(","):
        try:
            host, port = split_hostport(item.strip())
        except ValueError:
            print(f"meshctl: --xds: {item.strip()!r} is not HOST:PORT", file=sys.stderr)
            return 1
        addresses.append((host, port))
    ca_pem = None
    if args.bootstrap_ca:
        try:
            with open(args.bootstrap_ca, encoding="ascii") as f:
                ca_pem = f.read()
        except (OSError, ValueError) as exc:
            print(f"meshctl bootstrap: --ca {args.bootstrap_ca}: {exc}", file=sys.stderr)
            return 1
    try:
        doc = bootstrap(
            args.node_id,
            args.node_cluster,
            admin_port=args.admin_port,
            delta=args.delta,
            token=args.join_token,
            ca_pem=ca_pem,
            xds_addresses=addresses,
        )
    except ValueError as exc:
        print(f"meshctl bootstrap: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(doc, args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshctl", description="APG Service Mesh command-line client")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bootstrap", help="print an Envoy bootstrap that connects to meshd over ADS")
    b.add_argument("--node-id", required=True, help="Envoy node id (unique per proxy)")
    b.add_argument(
        "--node-cluster", required=True, help="Envoy node cluster (listeners' nodes globs match it)"
    )
    b.add_argument(
        "--xds",
        default="127.0.0.1:18000",
        help="meshd's xDS address HOST:PORT, or every replica's: HOST:PORT,HOST:PORT,...",
    )
    b.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port (0: any free)")
    b.add_argument("--delta", action="store_true", help="use Delta (incremental) ADS")
    b.add_argument(
        "--token",
        dest="join_token",
        help="join token (meshctl token create) sent on every xDS stream",
    )
    b.add_argument(
        "--ca",
        dest="bootstrap_ca",
        metavar="FILE",
        help="dial meshd over TLS, trusting this PEM bundle (meshctl ca get)",
    )
    b.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    b.set_defaults(func=_bootstrap)
    _admin_commands(sub)
    # Global flags also before the command name (their defaults live here).
    _global_flags(p, suppress=False)
    return p


def _global_flags(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--admin`` and ``--token``: on the main parser with defaults, and on every command
    with SUPPRESS so a value given after the command name wins without erasing one given
    before it."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p.add_argument(
        "--admin",
        default=default(os.environ.get("MESHCTL_ADMIN", "127.0.0.1:18001")),
        help="meshd admin API HOST:PORT (env MESHCTL_ADMIN)",
    )
    p.add_argument(
        "--token",
        default=default(os.environ.get("MESHCTL_TOKEN")),
        help="admin API bearer token (env MESHCTL_TOKEN)",
    )
    p.add_argument(
        "--ca",
        metavar="FILE",
        default=default(os.environ.get("MESHCTL_CA")),
        help="trust a TLS admin API signed by this PEM bundle (env MESHCTL_CA)",
    )


def _output(value: str) -> str:
    """``-o text`` is the people's table (the spelling issue 6 and some tools use)."""
    return "table" if value == "text" else value


def _command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    func: Callable[[commands.Client, argparse.Namespace], int],
    help_: str,
    outputs: Sequence[str] = ("table", "json", "yaml"),
) -> argparse.ArgumentParser:
    c: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
    _global_flags(c, suppress=True)
    c.add_argument(
        "-o",
        "--output",
        choices=outputs,
        default="table",
        type=_output,
        help=f"output format ({', '.join(outputs)}; 'text' is the table)",
    )
    c.set_defaults(func=functools.partial(commands.run, func=func))
    return c


def _admin_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = _command(
        sub, "apply", commands.apply, "create or update the documents in FILE, all or nothing"
    )
    c.add_argument("-f", "--filename", required=True, help="YAML or JSON manifest ('-': stdin)")
    c.add_argument("--dry-run", action="store_true", help="validate and report, write nothing")
    c.add_argument(
        "--force",
        action="store_true",
        help="write service changes that routes or listeners in force depend on",
    )

    c = _command(sub, "get", commands.get, "show registry entries")
    c.add_argument("kind", help="services, endpoints, routes, listeners, namespaces or policies")
    c.add_argument("name", nargs="?", help="entry name (endpoints: SERVICE or SERVICE/ID)")
    c.add_argument("-n", "--namespace", help="namespace (default: all; 'default' with a NAME)")

    c = _command(sub, "delete", commands.delete, "delete one registry entry")
    c.add_argument("kind", help="services, endpoints, routes, listeners, namespaces or policies")
    c.add_argument("name", help="entry name (endpoints: SERVICE/ID)")
    c.add_argument("-n", "--namespace", help="namespace (default: default)")
    c.add_argument("--revision", type=int, default=0, help="only if still at this revision")
    c.add_argument(
        "--force",
        action="store_true",
        help="delete a service that routes or listeners in force depend on",
    )
    c.add_argument("--dry-run", action="store_true", help="check the delete, write nothing")

    c = _command(sub, "split", commands.split, "replace a route's destinations in one write")
    c.add_argument("route", help="route name")
    c.add_argument("destinations", nargs="+", metavar="SERVICE[@SUBSET]=WEIGHT")
    c.add_argument("-n", "--namespace", help="the route's namespace (default: default)")
    c.add_argument("--revision", type=int, default=0, help="only if still at this revision")

    c = _command(sub, "proxy-status", commands.proxy_status, "what every connected proxy runs")
    c.add_argument("node_id", nargs="?", help="one node only")

    c = _command(sub, "proxy-config", commands.proxy_config, "the config a proxy was last sent")
    c.add_argument("node_id")
    c.add_argument(
        "--type",
        choices=("SDS", "CDS", "EDS", "LDS", "RDS", "sds", "cds", "eds", "lds", "rds"),
        help="one type (SDS: Secrets, their private keys shown as [redacted])",
    )

    c = _command(sub, "errors", commands.errors, "rejected registry entries and why")
    c.add_argument("-n", "--namespace", help="one namespace only")

    c = _command(sub, "health", observed.health, "aggregated endpoint health per service")
    c.add_argument("service", nargs="?", help="one service: NAME or NS/NAME")
    c.add_argument("-n", "--namespace", help="namespace (default: all; 'default' with a NAME)")

    c = _command(
        sub,
        "topology",
        observed.topology,
        "the service graph: allowed edges and observed traffic (svg needs Graphviz's dot)",
        outputs=("table", "json", "yaml", "dot", "svg"),
    )
    c.add_argument("--window", type=int, default=0, help="seconds the rates cover (default 60)")

    c = _command(sub, "recommend", observed.recommend, "endpoints the observed load needs")
    c.add_argument("--window", type=int, default=0, help="seconds the load covers (default 60)")

    c = _command(
        sub, "red", observed.red, "rate, errors, in-flight per service and upstream endpoint"
    )
    c.add_argument("service", nargs="?", help="one service: NAME or NS/NAME")
    c.add_argument("-n", "--namespace", help="namespace (default: all; 'default' with a NAME)")
    c.add_argument("--window", type=int, default=0, help="seconds the rates cover (default 60)")

    p = sub.add_parser(
        "policy", help="authorization policies", description="authorization policies"
    )
    psub = p.add_subparsers(dest="policy_command", metavar="{check}", required=True)
    c = _command(
        psub, "check", policy.check, "allow or deny, and which policy decides, without traffic"
    )
    c.add_argument(
        "--from", dest="source", required=True, help="caller: NS/NAME or gateway:CLUSTER"
    )
    c.add_argument("--to", dest="target", required=True, help="service called: NS/NAME")
    c.add_argument("--path", default="/", help="request path (default /)")
    c.add_argument("--method", default="GET", help="request method (default GET)")

    t = sub.add_parser("token", help="join tokens for proxies", description="join tokens")
    tsub = t.add_subparsers(dest="token_command", metavar="{create,list,revoke}", required=True)
    c = _command(
        tsub, "create", token_commands.create, "issue a join token (printed once) for IDENTITY"
    )
    c.add_argument("identity", help="NS/NAME (a service's sidecars) or gateway:CLUSTER")
    c.add_argument("--ttl", default="24h", help="lifetime: Ns, Nm or Nh, at least 5s (24h)")
    _command(tsub, "list", token_commands.list_, "join tokens: id, identity, expiry")
    c = _command(tsub, "revoke", token_commands.revoke, "revoke a join token: its streams end")
    c.add_argument("id", help="the token's id (meshctl token list)")

    a = sub.add_parser("ca", help="the mesh CA", description="the mesh CA")
    asub = a.add_subparsers(dest="ca_command", metavar="{get}", required=True)
    c = _command(asub, "get", ca_commands.get, "print the trust bundle (PEM)")
    c.add_argument("--etcd", help="read it from etcd (ENDPOINTS, comma-separated), not meshd")
    c.add_argument("--prefix", default="/mesh/", help="registry prefix in etcd (/mesh/)")
    c.add_argument("--etcd-cacert", help="with --etcd: PEM file of the CA of etcd's certificate")
    c.add_argument("--etcd-cert", help="with --etcd: PEM client certificate (with --etcd-key)")
    c.add_argument("--etcd-key", help="with --etcd: PEM key of the client certificate")
    c.add_argument("--etcd-user", help="with --etcd: etcd user (password: --etcd-password-file)")
    c.add_argument("--etcd-password-file", help="with --etcd: file holding its password")

    c = _command(sub, "watch", commands.watch, "stream mesh events until Ctrl-C")
    c.add_argument(
        "--type",
        action="append",
        help="event type (registry_put, registry_delete, registry_rejected, push, nack, "
        "proxy_connected, proxy_disconnected, health); repeatable",
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
