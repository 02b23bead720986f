"""The go-control-plane server of ``integration/gcp/`` as a process: built once, cached, run.

``integration/gcp/`` is a small Go program written as go-control-plane's users write an xDS
server (a SnapshotCache for CDS, LDS and RDS, a LinearCache for EDS, one ADS server for SotW
and Delta), reading meshd's registry from etcd as meshd does. This module builds it with the
machine's Go toolchain (``$GO``, else ``go`` on the PATH, else ``/usr/local/go/bin/go``;
modules from the Go module proxy, at the versions ``go.sum`` pins) and runs it beside meshd.

A build on a clean module and build cache takes minutes here, so the binary is kept under
``.meshd/gcp-server/<key>/`` (git ignores ``.meshd/``), ``key`` a hash of ``go.mod``,
``go.sum`` and the Go sources: any edit builds anew, anything else reuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from integration.bench_scale import ServerProcess
from integration.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "integration" / "gcp"
CACHE = ROOT / ".meshd" / "gcp-server"


def go_tool() -> str | None:
    """The Go toolchain to build with, or None when the machine has none."""
    for candidate in (os.environ.get("GO"), shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def source_key() -> str:
    """A hash of what the binary is built from: go.mod, go.sum and every .go file."""
    digest = hashlib.sha256()
    for path in sorted([SOURCE / "go.mod", SOURCE / "go.sum", *SOURCE.glob("*.go")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build(force: bool = False) -> tuple[Path, str]:
    """The server binary (built now unless cached) and a line saying which and how long."""
    binary = CACHE / source_key() / "gcp-server"
    if binary.exists() and not force:
        return binary, f"go-control-plane server: cached binary {binary.relative_to(ROOT)}"
    go = go_tool()
    if go is None:
        raise RuntimeError(
            "no Go toolchain (set GO, or put go on the PATH) to build integration/gcp"
        )
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}
    started = time.monotonic()
    out = subprocess.run(
        [go, "build", "-o", str(partial), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"go build of integration/gcp failed:\n{out.stderr[-3000:]}")
    partial.rename(binary)
    took = time.monotonic() - started
    return binary, f"go-control-plane server: built {binary.relative_to(ROOT)} in {took:.1f} s"


class GoServer(ServerProcess):
    """The go-control-plane server as its own process, shaped like bench_scale's ``Meshd``
    (``pid``, ``target``, ``cpu``, ``rss_kb``, ``wait_ready``, ``stop``): its stdout lines
    say when its caches hold the listed registry and which revision it has applied."""

    what = "go-control-plane server"

    def __init__(
        self,
        binary: Path,
        etcd: str,
        workdir: Path,
        name: str,
        prefix: str,
        xds_port: int | None = None,
        node_clusters: Sequence[str] = ("sidecar",),
    ) -> None:
        self.xds_port = xds_port or free_port()
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.revision = 0
        self.ready_wall: float | None = None
        self._seen = threading.Condition()
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--etcd",
                etcd,
                "--prefix",
                prefix,
                "--xds",
                f"127.0.0.1:{self.xds_port}",
                "--node-clusters",
                ",".join(node_clusters),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            words = raw.decode(errors="replace").split()
            with self._seen:
                if words[:1] == ["ready"]:
                    self.ready_wall = float(words[1])
                    self.revision = max(self.revision, int(words[3]))
                elif words[:1] == ["applied"]:
                    self.revision = max(self.revision, int(words[1]))
                self._seen.notify_all()

    def ready_logged_at(self) -> float | None:
        """Seconds from start to its "ready" line: the listed registry in both caches."""
        return None if self.ready_wall is None else self.ready_wall - self.started_wall

    async def wait_ready(self, revision: int, timeout: float = 120) -> float:
        """Wait until it has applied ``revision``; seconds since its start."""

        def wait() -> bool:
            with self._seen:
                return self._seen.wait_for(
                    lambda: self.revision >= revision or self.proc.poll() is not None, timeout
                )

        await asyncio.to_thread(wait)
        self.check_alive()
        if self.revision < revision:
            raise TimeoutError(f"go-control-plane server not at revision {revision}")
        return time.monotonic() - self.started

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self._reader.join(5)
        self._log.close()


def main() -> None:
    """``python -m integration.gcp_server``: build (or find) the binary, print its path."""
    binary, how = build()
    print(how)
    print(binary)


if __name__ == "__main__":
    main()
