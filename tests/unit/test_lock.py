"""The lock `make` installs from (constraints.txt) names every dependency pyproject.toml
declares, runtime and test: a fresh clone installs each at the version the suite passed with
(a dependency added to pyproject.toml without `make lock` would float)."""

from __future__ import annotations

import re
import tomllib

from tests.support.paths import REPO_ROOT


def _name(spec: str) -> str:
    """The normalised distribution name of a requirement (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
    assert match is not None, spec
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def test_every_declared_dependency_is_locked() -> None:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    lines = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    locked = {_name(line.split("==")[0]) for line in lines if "==" in line}
    missing = sorted({_name(spec) for spec in declared} - locked)
    assert not missing, f"not in constraints.txt (run `make lock`): {missing}"


def test_the_edge_test_clients_are_locked() -> None:
    """PyJWT signs the route-jwt tokens and websockets is the WebSocket client of the edge
    acceptance tests; both install from the lock."""
    lines = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    assert any(line.startswith("PyJWT==") for line in lines)
    assert any(line.startswith("websockets==") for line in lines)
