"""The benchmark harness runs end to end (a few seconds): pgqueue and the raw-SQL ceiling, two figures.

Not a benchmark: it proves `make bench` can run and writes {figure: {system: value}}; the figures themselves
are not checked (this machine is shared and noisy).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_bench_quick_runs_and_writes_figures(server_dsn: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--dsn", server_dsn, "--out", str(tmp_path),
         "--systems", "pgqueue,raw_sql", "--figures", "enqueue_single,process_1proc"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads((tmp_path / "latest.json").read_text())
    for figure in ("enqueue_single", "process_1proc"):
        for system in ("pgqueue", "raw_sql"):
            assert figures[figure][system] > 0, (figure, system, done.stdout[-2000:])
    assert figures["process_1proc"]["pgqueuer"] is None  # not asked for: an empty cell, not a made-up one
    assert "pgqueue ÷ raw" in (tmp_path / "latest.md").read_text()
    meta = json.loads((tmp_path / "latest-meta.json").read_text())
    assert meta["machine"]["cores"] >= 1
