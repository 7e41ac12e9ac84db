"""Starts ``bench.baseline_server`` as a child process and waits until it serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]


class BaselineProcess:
    """``with BaselineProcess(models_dir, workers=2) as server: server.address``."""

    def __init__(self, models_dir: str | Path, workers: int = 1, threads: int = 1,
                 start_timeout_s: float = 180.0, log_path: str | Path | None = None,
                 lora_cache: int = 0) -> None:
        self.models_dir = str(models_dir)
        self.workers = workers
        self.threads = threads
        self.lora_cache = lora_cache
        self.start_timeout_s = start_timeout_s
        self.log_path = log_path
        self.address = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._tmp = tempfile.TemporaryDirectory(prefix="baseline-")

    def start(self) -> str:
        ready = Path(self._tmp.name) / "ready.json"
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop()
        log = self._log or subprocess.DEVNULL
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.baseline_server", "--models-dir", self.models_dir,
             "--workers", str(self.workers), "--threads", str(self.threads),
             "--lora-cache", str(self.lora_cache),
             "--ready-file", str(ready)],
            cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.exists():
            if self._proc.poll() is not None:
                raise RuntimeError(f"baseline server exited with {self._proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("baseline server did not become ready")
            time.sleep(0.1)
        self.address = json.loads(ready.read_text())["address"]
        return self.address

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
