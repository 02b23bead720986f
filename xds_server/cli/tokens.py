"""``meshctl token create|list|revoke``: join tokens for proxies (``docs/admin-api.md``).

``create`` prints the token once, on one line (``-o json``: ``{"id", "token", "identity",
"expires"}``); meshd keeps only its hash, so it cannot be shown again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from typing import Any

from xds_server.admin.api import admin_pb2 as pb
from xds_server.cli.commands import Client, UserError
from xds_server.cli.manifest import dumps
from xds_server.cli.tables import table

_TTL = re.compile(r"^([0-9]+)([smh])$")
_UNITS = {"s": 1, "m": 60, "h": 3600}
MIN_TTL_S = 5


def parse_ttl(text: str) -> int:
    """``30s``, ``10m``, ``24h`` as seconds (at least 5 s); UserError naming --ttl."""
    m = _TTL.fullmatch(text.strip())
    if m is None:
        raise UserError(f"--ttl {text!r}: expected a duration like 30s, 10m or 24h")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds < MIN_TTL_S:
        raise UserError(f"--ttl {text!r}: must be at least {MIN_TTL_S}s")
    return seconds


def _expires(info: Any) -> str:
    moment = datetime.datetime.fromtimestamp(info.expires.seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _doc(info: Any) -> dict[str, Any]:
    return {"id": info.id, "identity": info.identity, "expires": _expires(info)}


def create(client: Client, args: argparse.Namespace) -> int:
    ttl = parse_ttl(args.ttl)
    resp = client.call(
        "CreateJoinToken", pb.CreateJoinTokenRequest(identity=args.identity, ttl_seconds=ttl)
    )
    if args.output == "json":
        doc = {"id": resp.info.id, "token": resp.token, **_doc(resp.info)}
        sys.stdout.write(json.dumps(doc) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(
            dumps({"id": resp.info.id, "token": resp.token, **_doc(resp.info)}, "yaml")
        )
    else:
        print(resp.token)  # one line: what a script captures
        print(
            f"join token {resp.info.id} for {resp.info.identity}, expires {_expires(resp.info)}"
            " (shown once: meshd keeps only its hash)",
            file=sys.stderr,
        )
    return 0


def list_(client: Client, args: argparse.Namespace) -> int:
    resp = client.call("ListJoinTokens", pb.ListJoinTokensRequest())
    docs = [_doc(t) for t in resp.tokens]
    if args.output in ("json", "yaml"):
        sys.stdout.write(dumps({"revision": resp.revision, "items": docs}, args.output))
        return 0
    rows = [[d["id"], d["identity"], d["expires"]] for d in docs]
    sys.stdout.write(table(["ID", "IDENTITY", "EXPIRES"], rows))
    return 0


def revoke(client: Client, args: argparse.Namespace) -> int:
    resp = client.call("RevokeJoinToken", pb.RevokeJoinTokenRequest(id=args.id))
    if args.output in ("json", "yaml"):
        sys.stdout.write(dumps({"id": args.id, "revision": resp.revision}, args.output))
    else:
        print(f"join token {args.id} revoked")
    return 0
