"""Regenerate loraplane/proto/ from protos/loraplane/v1/*.proto.

The generated modules live flat in loraplane/proto/ so that `from loraplane.proto import
trainer_pb2` works; protoc writes imports as `from loraplane.v1 import ...`, which this script
rewrites. CI runs it and fails if the committed code differs (`git diff --exit-code`).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "loraplane" / "proto"
IMPORT_RE = re.compile(r"^from loraplane\.v1 import", re.MULTILINE)


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "loraplane" / "v1").glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            return 1
        for old in OUT.glob("*_pb2*.py*"):
            old.unlink()
        for generated in sorted((Path(tmp) / "loraplane" / "v1").iterdir()):
            text = IMPORT_RE.sub("from loraplane.proto import", generated.read_text())
            (OUT / generated.name).write_text(text)
    init = OUT / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC code for loraplane.v1 (scripts/gen_protos.py)."""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
