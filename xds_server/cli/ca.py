"""``meshctl ca get``: the mesh's trust bundle (PEM), to trust meshd and the workloads.

Over the admin API (GetTrustBundle) when meshctl already reaches meshd, or straight from
etcd with ``--etcd ENDPOINTS`` for first contact: etcd is then the root of trust, and the
bundle is read from ``<prefix>ca/bundle`` through etcd's JSON gateway (``/v3/kv/range``),
so meshctl needs no etcd client. Only certificates are ever printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

from xds_server.admin.api import admin_pb2 as pb
from xds_server.cli.commands import Client, UserError, message_dict
from xds_server.cli.manifest import dumps

BUNDLE_KEY = "ca/bundle"
"""Where, under the registry's prefix, meshd keeps the bundle."""


def get(client: Client, args: argparse.Namespace) -> int:
    """Print the trust bundle: from etcd with ``--etcd``, else from meshd."""
    if args.etcd:
        return _from_etcd(args)
    resp = client.call("GetTrustBundle", pb.GetTrustBundleRequest())
    if args.output in ("json", "yaml"):
        sys.stdout.write(dumps(message_dict(resp), args.output))
    else:
        sys.stdout.write(resp.bundle_pem)
    return 0


def _from_etcd(args: argparse.Namespace) -> int:
    prefix = args.prefix if args.prefix.endswith("/") else args.prefix + "/"
    key = prefix + BUNDLE_KEY
    errors = []
    for endpoint in [e.strip() for e in args.etcd.split(",") if e.strip()]:
        url = endpoint if "://" in endpoint else f"http://{endpoint}"
        try:
            found = _range(url.rstrip("/") + "/v3/kv/range", key)
        except (OSError, ValueError) as exc:
            errors.append(f"{endpoint}: {exc}")
            continue
        if found is None:
            raise UserError(f"no trust bundle at {key} in etcd (has meshd started once?)")
        bundle, revision = found
        if args.output in ("json", "yaml"):
            doc = {"bundlePem": bundle, "revision": str(revision)}
            sys.stdout.write(dumps(doc, args.output))
        else:
            sys.stdout.write(bundle)
        return 0
    why = "; ".join(errors) or "no endpoint"
    print(f"meshctl ca get: etcd unreachable ({why})", file=sys.stderr)
    return 2


def _range(url: str, key: str) -> tuple[str, int] | None:
    """The value of ``key`` (and the revision it was read at), None when absent."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        doc = json.load(resp)
    kvs = doc.get("kvs") or []
    if not kvs:
        return None
    value = base64.b64decode(kvs[0].get("value", "")).decode()
    return value, int(doc.get("header", {}).get("revision", 0))
