"""The committed winnow.v1 stubs match their .proto files (CI fails on stale stubs)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

PROTO = Path(__file__).resolve().parents[2] / "proto"
GEN = PROTO / "gen.py"


def test_committed_stubs_are_fresh() -> None:
    result = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_names_a_stale_stub(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("winnow_proto_gen", GEN)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    shutil.copytree(PROTO / "winnow", tmp_path / "winnow")
    stub = tmp_path / "winnow" / "v1" / "records_pb2.pyi"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    (tmp_path / "winnow" / "v1" / "gone_pb2.py").write_text("# left over from a deleted .proto\n")
    assert gen.stale_files(tmp_path) == ["winnow/v1/gone_pb2.py", "winnow/v1/records_pb2.pyi"]
