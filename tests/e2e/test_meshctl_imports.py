"""meshctl is a client: loading it loads nothing of the server (no control loop, cache,
translation, xDS servers, health or topology), so it starts fast and stays apart."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_PARTS = (
    "xds_server.app",
    "xds_server.server",
    "xds_server.cache",
    "xds_server.ingest",
    "xds_server.translate",
    "xds_server.health",
    "xds_server.topology",
)


def test_meshctl_imports_nothing_of_the_server() -> None:
    code = (
        "import json, sys, xds_server.cli.meshctl; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('xds_server'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    loaded = json.loads(out)
    assert "xds_server.cli.meshctl" in loaded
    server = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in SERVER_PARTS)]
    assert server == []
