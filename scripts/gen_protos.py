"""Regenerate loraplane/proto/ from protos/loraplane/v1/*.proto.

The generated modules live flat in loraplane/proto/ so that `from loraplane.proto import
trainer_pb2` works; protoc writes imports as `from loraplane.v1 import ...`, which this script
rewrites. `--check` regenerates into memory and exits 1 if the committed code differs (the
test suite runs it).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "loraplane" / "proto"
BIN = Path(sys.executable).parent
IMPORT_RE = re.compile(r"^from loraplane\.v1 import", re.MULTILINE)


def generate() -> dict[str, str]:
    """File name -> content of every generated module."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "loraplane" / "v1").glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            # mypy-protobuf's plugins live beside this interpreter, which need not be on PATH.
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        return {
            generated.name: IMPORT_RE.sub("from loraplane.proto import", generated.read_text())
            for generated in sorted((Path(tmp) / "loraplane" / "v1").iterdir())
        }


def main(argv: list[str]) -> int:
    generated = generate()
    committed = {p.name: p.read_text() for p in OUT.glob("*_pb2*.py*")}
    if "--check" in argv:
        stale = sorted(set(generated.items()) ^ set(committed.items()))
        for name in sorted({name for name, _ in stale}):
            print(f"loraplane/proto/{name} is out of date: run python scripts/gen_protos.py", file=sys.stderr)
        return 1 if stale else 0
    for name in committed.keys() - generated.keys():
        (OUT / name).unlink()
    for name, text in generated.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
