"""Generate the admin API's Python code from proto/ (``make proto``).

Writes ``xds_server/admin/api/admin_pb2.py``, ``admin_pb2.pyi`` and ``admin_pb2_grpc.py``
(grpcio-tools' protoc), with the one import protoc writes as ``apg.mesh.admin.v1`` pointed
at the package instead, so no top-level ``apg`` package is needed. tests/e2e/test_admin_proto.py
checks that the committed files match what this produces.

    python proto/generate.py [OUT_DIR]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SOURCE = "apg/mesh/admin/v1/admin.proto"
DEFAULT_OUT = ROOT / "xds_server" / "admin" / "api"
PACKAGE = "xds_server.admin.api"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO_ROOT / SOURCE),
            ],
            check=True,
        )
        generated = Path(tmp) / Path(SOURCE).parent
        written = []
        for src in sorted(generated.iterdir()):
            text = src.read_text()
            text = text.replace("from apg.mesh.admin.v1 import", f"from {PACKAGE} import")
            dest = out_dir / src.name
            dest.write_text(text)
            written.append(dest)
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated admin API code: do not edit (see proto/generate.py)."""\n')
    return written


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path.relative_to(out.parent) if out == DEFAULT_OUT else path)


if __name__ == "__main__":
    main()
