"""``meshctl policy check``: what the authorization policies in force decide for one caller
and request, asked of meshd (CheckPolicy), without sending traffic.

Same conventions as :mod:`xds_server.cli.commands` (``-o json|yaml``, exit codes); the
decision itself does not change the exit code: 0 for allow and deny alike.
"""

from __future__ import annotations

import argparse
import sys

from xds_server.admin.api import admin_pb2 as pb
from xds_server.cli.commands import Client, message_dict
from xds_server.cli.manifest import dumps


def check(client: Client, args: argparse.Namespace) -> int:
    """Print ``allow`` or ``deny``, then the policy that decided (or the default) and why."""
    request = pb.CheckPolicyRequest(
        source=args.source, target=args.target, path=args.path, method=args.method
    )
    resp = client.call("CheckPolicy", request)
    if args.output in ("json", "yaml"):
        sys.stdout.write(dumps(message_dict(resp), args.output))
        return 0
    print("allow" if resp.allowed else "deny")
    decided = resp.policy or f"(namespace default: {resp.default_policy})"
    if not resp.policy and "none matches" in resp.reason:
        decided = "(no allow policy matches)"
    print(f"policy: {decided}")
    print(f"reason: {resp.reason}")
    return 0
