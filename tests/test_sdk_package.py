"""The SDK installs alone: a fresh virtualenv gets only ``pip install ./sdk`` (the
``dfleet`` distribution: the dfleet package and the generated stubs, with grpcio,
protobuf, numpy and pillow), torch and the server's packages are absent from it, and a
script run there generates an image against the test fleet.

Marked slow (minutes: a virtualenv and four packages from the index); run it with
``pytest -m slow tests/test_sdk_package.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import importlib.util, json, sys
import dfleet
absent = [m for m in ("torch", "diffusers", "kubernetes", "redis", "services", "fastapi")
          if importlib.util.find_spec(m) is not None]
with dfleet.Client(sys.argv[1], timeout=300) as client:
    result = client.generate("a red fox", seed=1, steps=3,
                             loras=[dfleet.Lora("tiny-lora-r4", 0.7)])
print(json.dumps({"present": absent, "size": list(result.image.size),
                  "dfleet": dfleet.__file__, "torch_loaded": "torch" in sys.modules}))
"""


@pytest.mark.slow
def test_sdk_installs_alone_and_generates(fleet: Any, tmp_path: Path) -> None:
    env_dir = tmp_path / "sdk-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT / "sdk")],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, timeout=120, check=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "dfleet" in installed and "torch" not in installed
    assert not installed & {"diffusers", "transformers", "kubernetes", "redis",
                            "grpcio-tools", "diffusion-fleet"}
    run = subprocess.run([str(python), "-c", SCRIPT, fleet.gateway_address], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["present"] == [] and not found["torch_loaded"]
    assert found["size"] == [64, 64]
    assert str(env_dir) in found["dfleet"]  # the installed copy, not this checkout
    assert sys.executable != str(python)
