"""The package layering: which part of meshd may import which, read from the source.

Data flows one way (registry -> ingest -> translate -> cache -> server), and the parts
below know nothing of those above: the xDS vocabulary (``resources``) imports no other
part, the model only errors and the vocabulary, translation neither the cache nor the
servers, the cache only the vocabulary (names and scopes, never what a listener is), the
servers neither the pipeline nor translation. Every import counts, also those inside
functions and ``TYPE_CHECKING`` blocks. ``app`` (the composition root) and ``cli`` may
import anything (meshctl's own rule is in ``tests/e2e/test_meshctl_imports.py``).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
PACKAGES = ("xds_server", "adapters")

X = "xds_server."
ALLOWED: dict[str, frozenset[str]] = {
    X + "resources": frozenset(),
    X + "errors": frozenset(),
    X + "events": frozenset(),
    X + "listen": frozenset(),
    X + "stream_auth": frozenset(),
    X + "log_limit": frozenset(),
    X + "http_server": frozenset({X + "log_limit"}),
    X + "stream_limits": frozenset({X + "log_limit"}),
    X + "model": frozenset({X + "errors", X + "resources"}),
    X + "identity": frozenset({X + "model", X + "resources", X + "errors"}),
    X + "cache": frozenset({X + "resources"}),
    X + "translate": frozenset({X + "model", X + "resources", X + "errors"}),
    X + "metrics_labels": frozenset({X + "stream_auth"}),
    X + "metrics": frozenset({X + "metrics_labels", X + "model", X + "resources"}),
    X + "metrics_sd": frozenset({X + "metrics_labels"}),
    X + "metrics_http": frozenset(
        {X + "metrics", X + "metrics_labels", X + "metrics_sd", X + "model", X + "resources"}
        | {X + "http_server"}
    ),
    X + "server": frozenset(
        {X + "cache", X + "resources", X + "errors", X + "events", X + "metrics"}
        | {X + "stream_auth", X + "stream_limits", X + "log_limit"}
    ),
    X + "ingest": frozenset(
        {X + "cache", X + "translate", X + "model", X + "resources", X + "errors"}
        | {X + "events", X + "metrics"}
    ),
    X + "health": frozenset(
        {X + "ingest", X + "translate", X + "model", X + "resources", X + "errors"}
        | {X + "events", X + "metrics", X + "stream_auth", X + "stream_limits"}
    ),
    X + "topology": frozenset(
        {X + "ingest", X + "translate", X + "model", X + "resources", X + "errors"}
        | {X + "events", X + "metrics", X + "stream_auth", X + "stream_limits"}
    ),
    X + "token_authority": frozenset(
        {X + "ingest", X + "model", X + "resources", X + "errors", X + "stream_auth"}
        | {X + "stream_limits"}
    ),
    X + "admin": frozenset(
        {X + "server", X + "health", X + "topology", X + "ingest", X + "model"}
        | {X + "resources", X + "errors", X + "events", X + "listen", X + "stream_auth"}
    ),
    X + "console": frozenset({X + "admin", X + "http_server", X + "errors", X + "events"}),
    "adapters": frozenset({X + "ingest", X + "model", X + "resources", X + "errors"}),
}
"""Part -> the parts it may import (beside itself). A part not listed has no rule."""

KNOWN: frozenset[tuple[str, str]] = frozenset()
"""(importing module, imported module) pairs let through until they move; each one is a
debt, not a rule (none today)."""


def part(module: str) -> str:
    """The part a module belongs to: ``xds_server.<package or module>``, or ``adapters``."""
    head, _, rest = module.partition(".")
    if head == "adapters":
        return "adapters"
    return f"{head}.{rest.split('.')[0]}" if rest else head


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts)
            yield name.removesuffix(".__init__"), path


def imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import of ours in the file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join([*parts[:keep], *([base] if base else [])])
            names = [base]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                yield node.lineno, name


def test_every_part_imports_only_what_its_layer_allows() -> None:
    bad = []
    for module, path in modules():
        mine = part(module)
        allowed = ALLOWED.get(mine)
        if allowed is None:
            continue
        for line, imported in imports(module, path):
            theirs = part(imported)
            if theirs == mine or theirs in allowed or (module, imported) in KNOWN:
                continue
            rel = path.relative_to(ROOT)
            bad.append(f"{rel}:{line}: {mine} imports {imported} ({theirs} is not allowed)")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles_between_parts() -> None:
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for module, path in modules():
        mine = part(module)
        for line, imported in imports(module, path):
            theirs = part(imported)
            if theirs != mine and (module, imported) not in KNOWN:
                graph.setdefault(mine, set()).add(theirs)
                where.setdefault((mine, theirs), f"{path.relative_to(ROOT)}:{line}")
    cycles = []
    for start in sorted(graph):
        # Depth-first from each part: a path back to it is a cycle.
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start and min(trail) == start:  # (each cycle reported once)
                    hops = [*trail, start]
                    cycles.append(
                        " -> ".join(hops)
                        + " ("
                        + ", ".join(where[a, b] for a, b in itertools.pairwise(hops))
                        + ")"
                    )
                elif nxt not in seen and nxt != start:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not cycles, "import cycles between parts:\n" + "\n".join(cycles)


def test_the_rules_catch_a_bad_import(tmp_path: Path) -> None:
    """The check itself: a cache module importing the model is named, with its line."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\nfrom xds_server.model import Listener\n")
    found = list(imports("xds_server.cache.bad", bad))
    assert found == [(3, "xds_server.model")]
    assert part(found[0][1]) not in ALLOWED[part("xds_server.cache.bad")]
