"""Integration: a service started by a local launcher stops when the launcher is killed
outright (SIGKILL), and a service whose launcher is already gone does not start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAUNCHER = """
import sys, time
sys.path.insert(0, {root!r})
from dfleet.local_fleet import LocalFleet
fleet = LocalFleet({models!r}, redis_url="redis://127.0.0.1:9/0", state_dir={state!r})
service = fleet.spawn("lora_cache")
fleet._wait_port(service)
print(service.process.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.1)
    return False


def test_services_stop_when_their_launcher_is_killed(tiny_models: Path, tmp_path: Path) -> None:
    script = LAUNCHER.format(root=str(ROOT), models=str(tiny_models), state=str(tmp_path))
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                text=True)
    child = 0
    try:
        assert launcher.stdout is not None
        child = int(launcher.stdout.readline())
        assert not _gone(child)
        launcher.kill()
        launcher.wait(10)
        assert _wait_gone(child, 20), "the service outlived its killed launcher"
    finally:
        launcher.kill()
        if child and not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_service_whose_launcher_is_gone_exits(tiny_models: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    env = {**os.environ, "DFLEET_PARENT_PID": str(gone.pid)}
    done = subprocess.run([sys.executable, "-m", "services.lora_cache", "--models-dir",
                           str(tiny_models), "--port", "0"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "is gone" in done.stdout + done.stderr
