"""Regenerate the winnow.v1 protobuf and gRPC stubs, or check that the committed ones are fresh.

    python proto/gen.py           # rewrite proto/winnow/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py
    python proto/gen.py --check   # exit 1, naming the stale files, if regenerating would change them

protoc runs with ``-I proto``, so the stubs land next to their .proto files and import each other
as ``winnow.v1.xxx_pb2``. Output depends on the grpcio-tools version, which is pinned here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE = Path("winnow/v1")
GRPC_TOOLS_VERSION = "1.85.1"
GENERATED = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def generate(proto_root: Path, out: Path) -> None:
    """Run protoc on every .proto under ``proto_root/winnow/v1``, writing the stubs under ``out``."""
    from grpc_tools import protoc

    installed = importlib.metadata.version("grpcio-tools")
    if installed != GRPC_TOOLS_VERSION:
        sys.exit(f"proto/gen.py: stubs are generated with grpcio-tools=={GRPC_TOOLS_VERSION}, "
                 f"installed is {installed}: pip install grpcio-tools=={GRPC_TOOLS_VERSION}")
    protos = sorted(str(p) for p in (proto_root / PACKAGE).glob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{proto_root}", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        sys.exit(f"proto/gen.py: protoc failed on {protos}")


def _stubs(root: Path) -> dict[str, bytes]:
    folder = root / PACKAGE
    return {str(p.relative_to(root)): p.read_bytes() for pattern in GENERATED for p in folder.glob(pattern)}


def stale_files(proto_root: Path) -> list[str]:
    """Generated files under ``proto_root`` that differ from a fresh generation, are missing or extra."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(proto_root, Path(tmp))
        fresh = _stubs(Path(tmp))
    committed = _stubs(proto_root)
    return sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    if not parser.parse_args().check:
        generate(PROTO_ROOT, PROTO_ROOT)
        return
    stale = stale_files(PROTO_ROOT)
    if stale:
        sys.exit(f"proto/gen.py --check: stale generated stubs {stale}; run `python proto/gen.py` and commit them")
    print(f"proto/gen.py --check: stubs under {PROTO_ROOT / PACKAGE} are fresh")


if __name__ == "__main__":
    main()
