"""``meshctl ca get``: the mesh's trust bundle (PEM), to trust meshd and the workloads.

Over the admin API (GetTrustBundle) when meshctl already reaches meshd, or straight from
etcd with ``--etcd ENDPOINTS`` for first contact: etcd is then the root of trust, and the
bundle is read from ``<prefix>ca/bundle`` through etcd's JSON gateway (``/v3/kv/range``),
so meshctl needs no etcd client. An etcd with TLS or users is reached with etcdctl's
``--etcd-cacert/--etcd-cert/--etcd-key`` and ``--etcd-user`` (the password from
``--etcd-password-file``), as meshd takes them. Only certificates are ever printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

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
    context = _tls_context(args)
    password = _password(args)
    scheme = "https" if context else "http"
    errors = []
    for endpoint in [e.strip() for e in args.etcd.split(",") if e.strip()]:
        base = (endpoint if "://" in endpoint else f"{scheme}://{endpoint}").rstrip("/")
        try:
            token = None
            if password is not None:
                auth = {"name": args.etcd_user, "password": password}
                token = str(_post(base + "/v3/auth/authenticate", auth, context)["token"])
            found = _range(base + "/v3/kv/range", key, context, token)
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 401, 403):  # etcd refused the user or the password
                raise UserError(f"etcd {endpoint} refused: {_etcd_message(exc)}") from None
            errors.append(f"{endpoint}: {exc}")
            continue
        except (OSError, ValueError, KeyError) as exc:
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


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS to etcd when ``--etcd-cacert`` or a client certificate is given."""
    cacert = getattr(args, "etcd_cacert", None)
    cert, key = getattr(args, "etcd_cert", None), getattr(args, "etcd_key", None)
    if not (cacert or cert):
        return None
    if bool(cert) != bool(key):
        raise UserError("--etcd-cert and --etcd-key go together")
    try:
        context = ssl.create_default_context(cafile=cacert)
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"--etcd-cacert/--etcd-cert/--etcd-key: {exc}") from None
    return context


def _password(args: argparse.Namespace) -> str | None:
    """The etcd user's password, read from ``--etcd-password-file`` (never a flag)."""
    user, path = getattr(args, "etcd_user", None), getattr(args, "etcd_password_file", None)
    if not user and not path:
        return None
    if not (user and path):
        raise UserError("--etcd-user and --etcd-password-file go together")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"--etcd-password-file {path}: {exc.strerror or exc}") from None
    return text.removesuffix("\n").removesuffix("\r")


def _etcd_message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(exc).get("message") or exc.reason)
    except (ValueError, OSError):
        return str(exc.reason)


def _post(url: str, body: dict[str, str], context: ssl.SSLContext | None) -> dict[str, object]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5, context=context) as resp:
        doc: dict[str, object] = json.load(resp)
    return doc


def _range(
    url: str, key: str, context: ssl.SSLContext | None = None, token: str | None = None
) -> tuple[str, int] | None:
    """The value of ``key`` (and the revision it was read at), None when absent."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = token  # (etcd's gateway takes the token there)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=5, context=context) as resp:
        doc = json.load(resp)
    kvs = doc.get("kvs") or []
    if not kvs:
        return None
    value = base64.b64decode(kvs[0].get("value", "")).decode()
    return value, int(doc.get("header", {}).get("revision", 0))
