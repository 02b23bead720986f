"""The admin API contract: buf lint, buf breaking against the released image, generated
code up to date (``python proto/generate.py``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
BUF = shutil.which("buf") or str(Path(sys.executable).with_name("buf"))
RELEASED = ROOT / "proto" / "released" / "admin-v0.1.0.binpb"
GENERATED = ROOT / "xds_server" / "admin" / "api"


def _buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not Path(BUF).exists():
        pytest.fail("buf missing: it is a test dependency (buf-bin)")
    return subprocess.run([BUF, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint() -> None:
    out = _buf("lint")
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_breaking_change_against_the_last_release() -> None:
    out = _buf("breaking", "--against", str(RELEASED))
    assert out.returncode == 0, out.stdout + out.stderr


def test_buf_breaking_catches_a_renumbered_field(tmp_path: Path) -> None:
    """The check above can fail: a copy with a renumbered field is refused."""
    shutil.copytree(ROOT / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("released"))
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    proto = tmp_path / "proto" / "apg" / "mesh" / "admin" / "v1" / "admin.proto"
    text = proto.read_text()
    assert "  int64 revision = 3;" in text
    proto.write_text(text.replace("  int64 revision = 3;", "  int64 revision = 33;", 1))
    out = _buf("breaking", "--against", str(RELEASED), cwd=tmp_path)
    assert out.returncode != 0
    assert 'field "3" with name "revision"' in out.stdout + out.stderr


def _pinned(name: str) -> str:
    """The exact version pyproject.toml pins ``name`` to (what generates or is compared)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]["test"]
    for spec in extras:
        if spec.split("==")[0].strip() == name and "==" in spec:
            return spec.split("==")[1].strip()
    raise AssertionError(f"pyproject.toml does not pin {name} with ==")


def test_the_code_generator_is_pinned_and_locked() -> None:
    """The generated files are compared byte for byte, so the generator is pinned, and the
    lock file `make` installs from agrees with the pin (a fresh clone on any day gets it)."""
    pinned = _pinned("grpcio-tools")
    locked = (ROOT / "constraints.txt").read_text().splitlines()
    assert f"grpcio-tools=={pinned}" in locked


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    installed = metadata.version("grpcio-tools")
    pinned = _pinned("grpcio-tools")
    assert installed == pinned, (
        f"grpcio-tools {installed} is installed but pyproject.toml pins {pinned}: `make install`"
    )
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir() if p.suffix in (".py", ".pyi")}
    fresh.pop("__init__.py", None)
    committed = {p.name: p.read_text() for p in GENERATED.iterdir() if p.suffix in (".py", ".pyi")}
    committed.pop("__init__.py", None)
    assert fresh.keys() == committed.keys()
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `python proto/generate.py`: {stale} are out of date"
