"""The committed stubs under diffusion/v1 are what grpc_tools generates from protos/ now."""

from __future__ import annotations

import filecmp
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    protos = sorted(str(p) for p in (ROOT / "protos" / "diffusion" / "v1").glob("*.proto"))
    args = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", *protos]
    assert protoc.main(args) == 0
    fresh = sorted(p.name for p in (tmp_path / "diffusion" / "v1").iterdir())
    committed = sorted(p.name for p in (ROOT / "diffusion" / "v1").iterdir()
                       if p.suffix in (".py", ".pyi") and p.name != "__init__.py")
    assert fresh == committed
    stale = [name for name in fresh
             if not filecmp.cmp(tmp_path / "diffusion" / "v1" / name,
                                ROOT / "diffusion" / "v1" / name, shallow=False)]
    assert not stale, f"stale stubs, run `make protos`: {stale}"
