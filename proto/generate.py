"""Generate the Python code for the contract: `make proto` runs this.

The output lands in gen/python (never edited by hand). Only agent_relay/ is
generated: google/rpc/status.proto is vendored for a standalone compile, and its
Python code comes from the googleapis-common-protos package. tests/unit/test_proto_fresh.py
runs generate() into a temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(PROTO_ROOT.glob("agent_relay/**/*.proto"))
DEFAULT_OUT = PROTO_ROOT.parent / "gen" / "python"


def _include_dirs() -> list[str]:
    """proto/ (our files and the vendored google/rpc/status.proto), then the
    well-known types (google/protobuf/*.proto) that grpcio-tools ships."""
    well_known = str(resources.files("grpc_tools") / "_proto")
    return [str(PROTO_ROOT), well_known]


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py under out_dir; return the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc"]
    args += [f"-I{d}" for d in _include_dirs()]
    args += [f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += [str(p.relative_to(PROTO_ROOT)) for p in PROTO_FILES]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    for package in {p.relative_to(out_dir).parent for p in out_dir.rglob("*_pb2.py")}:
        for folder in [package, *package.parents]:
            if str(folder) != ".":
                (out_dir / folder / "__init__.py").touch()
    return sorted(p for p in out_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path.relative_to(out))
