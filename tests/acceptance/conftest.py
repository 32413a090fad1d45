from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

APP = "tests.acceptance.apps:app"


class Workers:
    """Worker processes of the acceptance app, stopped (or killed) when the test ends."""

    def __init__(self, dsn: str, runlog: Path) -> None:
        self.dsn = dsn
        self.runlog = runlog
        self.procs: list[subprocess.Popen[str]] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGQUEUE_DSN": self.dsn, "PGQUEUE_TEST_RUNLOG": str(self.runlog)}

    def start(self, *args: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "pgqueue", "work", APP, "--log-level", "warning", *args]
        output = self.runlog / f"worker-{len(self.procs)}.out"
        with output.open("w") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                    text=True)
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(f.read_text() for f in sorted(self.runlog.glob("worker-*.out")))

    def runs(self) -> list[str]:
        return [line for f in self.runlog.glob("*.log") for line in f.read_text().splitlines()]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(dsn: str, app: object, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(dsn, tmp_path)
    yield pool
    pool.stop_all()


def run_cli(dsn: str | None, *args: str, env: dict[str, str] | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    if dsn is not None:
        environment["PGQUEUE_DSN"] = dsn
    return subprocess.run([sys.executable, "-m", "pgqueue", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(dsn: str, app: object) -> Callable[..., subprocess.CompletedProcess[str]]:
    return lambda *args, **kw: run_cli(dsn, *args, **kw)
