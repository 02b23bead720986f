"""Run the real ``meshctl`` as a process, and the manifest most meshctl tests apply."""

from __future__ import annotations

import asyncio
import os
import sys

MANIFEST = """\
kind: Service
namespace: shop
name: web
spec: {port: 8080, subsets: {v1: {version: v1}, v2: {version: v2}}}
---
kind: Endpoint
namespace: shop
service: web
name: web-1
spec: {address: 127.0.0.1, labels: {version: v1}}
---
kind: Route
namespace: shop
name: front
spec:
  listener: public
  match: {prefix: /}
  destinations: [{service: web, subset: v1, weight: 100}]
---
kind: Listener
name: public
spec: {port: 10000}
"""


async def meshctl(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xds_server.cli.meshctl",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def spawn_meshctl(*args: str) -> asyncio.subprocess.Process:
    """A long-running ``meshctl`` (e.g. ``watch``) with its stdout piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xds_server.cli.meshctl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
