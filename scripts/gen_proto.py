"""Regenerate the gRPC Python modules from src/edgesplit/runtime/edgesplit.proto.

protoc writes ``import edgesplit_pb2`` into the service module, which only works when the
output folder is on sys.path; we rewrite it to a package-relative import so the generated code
lives inside ``edgesplit.runtime.proto``. Run with ``make proto``; the output is committed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "src" / "edgesplit" / "runtime"
OUT = RUNTIME / "proto"
PROTO = "edgesplit.proto"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{RUNTIME}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        str(RUNTIME / PROTO),
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"protoc failed with exit code {rc}", file=sys.stderr)
        return rc
    grpc_module = OUT / "edgesplit_pb2_grpc.py"
    text = grpc_module.read_text()
    fixed = re.sub(r"^import edgesplit_pb2 as", "from . import edgesplit_pb2 as", text, flags=re.M)
    grpc_module.write_text(fixed)
    init = OUT / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC code; regenerate with `make proto`, do not edit."""\n')
    print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('edgesplit_pb2*')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
