"""Debian tools the suite needs (Prometheus, Graphviz): installed with apt-get when missing.

Like the real Envoy and etcd, these run for real. Only where apt-get as root is not
available does a test skip, and then it prints why.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_updated = False


def ensure(package: str, *binaries: str) -> list[str]:
    """Paths of ``binaries``, installing Debian's ``package`` first when one is missing."""
    global _updated
    if not all(shutil.which(b) for b in binaries):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            reason = f"{package} is not installed and apt-get (as root) is unavailable"
            print(f"SKIP: {reason}")
            pytest.skip(reason)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if not _updated:
            subprocess.run(["apt-get", "update"], check=True, capture_output=True, env=env)
            _updated = True
        subprocess.run(
            ["apt-get", "install", "-y", package], check=True, capture_output=True, env=env
        )
    found = [shutil.which(b) for b in binaries]
    missing = [b for b, path in zip(binaries, found, strict=True) if path is None]
    assert not missing, f"apt-get installed {package}, but {missing} are not on PATH"
    return [p for p in found if p is not None]
