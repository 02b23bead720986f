"""``meshctl``: the command-line client. For now: ``meshctl bootstrap``.

Exit codes (``shared/spec/interfaces.md``): 0 ok, 1 user or validation error,
2 admin API unreachable or auth failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from xds_server.app import split_hostport
from xds_server.bootstrap import bootstrap, render


def _bootstrap(args: argparse.Namespace) -> int:
    try:
        host, port = split_hostport(args.xds)
    except ValueError:
        print(f"meshctl: --xds: {args.xds!r} is not HOST:PORT", file=sys.stderr)
        return 1
    try:
        doc = bootstrap(
            args.node_id,
            args.node_cluster,
            xds_host=host,
            xds_port=port,
            admin_port=args.admin_port,
            delta=args.delta,
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
    b.add_argument("--xds", default="127.0.0.1:18000", help="meshd's xDS address HOST:PORT")
    b.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port (0: any free)")
    b.add_argument("--delta", action="store_true", help="use Delta (incremental) ADS")
    b.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    b.set_defaults(func=_bootstrap)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
