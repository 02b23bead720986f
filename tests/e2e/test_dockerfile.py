"""The Dockerfile for meshd, checked by reading it (and by building its wheel stage locally).

No Docker engine runs on this machine (and no image registry is reachable), so
``docker build`` cannot run here. Instead these tests parse the Dockerfile and check what a
build would depend on: the base image and stages, the non-root user, the entry point, the
exposed ports, that every ``COPY`` source exists and survives ``.dockerignore``, that the
default flags mean what the comments say (through meshd's own argument parser), and that the
files the build stage copies are enough to build a wheel holding every module of the package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT
from xds_server.cli.meshd import parse_args

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


@dataclass
class Stage:
    """One ``FROM`` section: its base image (ARGs resolved), name and instructions."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]

    def last(self, op: str) -> str:
        found = self.all(op)
        assert found, f"no {op} in stage {self.name or self.base}"
        return found[-1]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuations joined, comment lines dropped.

    Docker drops comment lines also inside a continued instruction, as done here.
    """
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        op, _, args = (pending + line).partition(" ")
        out.append((op.upper(), args.strip()))
        pending = ""
    assert not pending, f"Dockerfile ends inside a continued line: {pending!r}"
    return out


def stages() -> list[Stage]:
    """The Dockerfile's stages, with global ``ARG`` defaults substituted in ``FROM``."""
    args: dict[str, str] = {}
    result: list[Stage] = []
    for op, rest in instructions(DOCKERFILE.read_text()):
        if op == "ARG" and not result:
            key, _, default = rest.partition("=")
            args[key] = default
        elif op == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], rest)
            parts = re.split(r"\s+as\s+", image, flags=re.I)
            result.append(Stage(parts[0], parts[1] if len(parts) > 1 else None))
        else:
            assert result, f"{op} before the first FROM"
            result[-1].instructions.append((op, rest))
    return result


def env_of(stage: Stage) -> dict[str, str]:
    """``ENV KEY=VALUE ...`` of a stage (the key=value form only, as the Dockerfile uses)."""
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in args.split():
            key, sep, value = item.partition("=")
            assert sep, f"ENV without '=': {args!r} (use the KEY=VALUE form)"
            env[key] = value
    return env


def copy_sources(args: str) -> list[str]:
    """Sources of a ``COPY`` (JSON or shell form), flags left out; last word is the target."""
    words = json.loads(args) if args.startswith("[") else args.split()
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` (relative, '/'-separated) out of the context.

    Docker's rules: the last matching pattern wins, ``!`` re-includes, and a pattern that
    matches a directory also matches everything below it.
    """
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negate
    return result


# --------------------------------------------------------------------------- tests


def test_multi_stage_build_on_python_311_slim() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "expected a build stage and a runtime stage"
    assert {s.base for s in all_stages} == {"python:3.11-slim"}
    build, final = all_stages[0], all_stages[-1]
    assert build.name == "build"
    # The build stage makes a wheel of our code only; the runtime stage installs it.
    assert any("pip wheel --no-deps" in run for run in build.all("RUN"))
    assert any(args.startswith("--from=build ") for args in final.all("COPY"))
    assert any("python -m venv" in run and ".whl" in run for run in final.all("RUN"))


def test_no_test_dependencies_in_the_image() -> None:
    runs = " ".join(run for stage in stages() for run in stage.all("RUN"))
    for word in ("[test]", "pytest", "mypy", "ruff", "hypothesis", "grpcio-tools"):
        assert word not in runs


def test_runs_as_a_non_root_user() -> None:
    final = stages()[-1]
    user = final.last("USER").split(":")[0]
    assert user not in ("root", "0")
    # A numeric uid must be created (with that uid) before USER switches to it.
    if user.isdigit():
        ops = [(op, args) for op, args in final.instructions if op in ("RUN", "USER")]
        created = [i for i, (op, args) in enumerate(ops) if "useradd" in args]
        switched = max(i for i, (op, _) in enumerate(ops) if op == "USER")
        assert created and created[0] < switched
        assert f"--uid {user}" in ops[created[0]][1]


def test_entrypoint_is_meshd_and_default_flags_listen_on_all_interfaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = stages()[-1]
    assert json.loads(final.last("ENTRYPOINT")) == ["meshd"]
    cmd = json.loads(final.last("CMD"))
    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd)
    # What meshd makes of the image's environment and default CMD, by its own parser.
    for key in list(os.environ):
        if key.startswith("MESHD_"):
            monkeypatch.delenv(key)
    for key, value in env_of(final).items():
        if key.startswith("MESHD_"):
            monkeypatch.setenv(key, value)
    args = parse_args(cmd)
    assert args.xds == "0.0.0.0:18000"
    assert args.metrics == "0.0.0.0:9102"
    assert args.admin.startswith("127.0.0.1:"), "admin API must stay on loopback without tokens"
    assert args.etcd is None  # embedded etcd by default
    assert args.data_dir == final.last("WORKDIR")


def test_exposes_xds_admin_and_metrics_ports() -> None:
    ports = {int(p.split("/")[0]) for args in stages()[-1].all("EXPOSE") for p in args.split()}
    assert ports >= {18000, 18001, 9102}


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    checked = 0
    for stage in stages():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue  # from another stage, not from the repository
            for source in copy_sources(args):
                path = REPO_ROOT / source
                assert path.exists(), f"COPY {source}: no such file in the repository"
                assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
                checked += 1
    assert checked >= 3
    # The context is small: local state and tests stay out, bytecode too.
    for kept_out in (".venv", ".git", ".meshd", "tests/x.py", "xds_server/__pycache__/x.pyc"):
        assert ignored(kept_out, patterns), kept_out


def test_build_stage_inputs_make_a_wheel_with_every_module(tmp_path: Path) -> None:
    """``pip wheel`` from exactly what the build stage copies (minus .dockerignore)."""
    patterns = dockerignore_patterns()
    src = tmp_path / "src"
    for args in stages()[0].all("COPY"):
        for source in copy_sources(args):
            origin = REPO_ROOT / source
            files = [origin] if origin.is_file() else sorted(origin.rglob("*"))
            for f in files:
                rel = f.relative_to(REPO_ROOT).as_posix()
                if f.is_file() and not ignored(rel, patterns):
                    (src / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, src / rel)
    dist = tmp_path / "dist"
    # No build isolation: this virtualenv's setuptools, so no index is needed here.
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # e.g. "File '.../README.md' cannot be found": pyproject names a file the stage lacks.
    assert "cannot be found" not in built.stderr.decode(), built.stderr.decode()
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = z.read(entry_points).decode()
    expected = {
        p.relative_to(REPO_ROOT).as_posix()
        for package in ("xds_server", "adapters")
        for p in (REPO_ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert expected - names == set(), "modules missing from the wheel"
    assert "meshd = xds_server.cli.meshd:main" in scripts
    assert "meshctl = xds_server.cli.meshctl:main" in scripts
