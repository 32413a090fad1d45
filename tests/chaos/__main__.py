"""``python -m tests.chaos [--quick] [--only 1,4] [--markdown FILE]``: run the chaos scenarios and report.

The server is ``$PGQUEUE_DSN``'s when set, else an embedded PostgreSQL started in a temporary folder. Each
scenario prints its figures as it ends; the last line is ``chaos: N passed, M failed``. Exit status 1 when
any scenario failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pgqueue import embedded
from tests.chaos.harness import PENDING, Result, load_scenarios, run_scenario


@contextmanager
def server() -> Iterator[str]:
    env = os.environ.get("PGQUEUE_DSN", "").strip()
    if env:
        yield env
        return
    home = Path(tempfile.mkdtemp(prefix="pgqueue-chaos-server-"))
    try:
        yield embedded.ensure_running(home)
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


def markdown(results: list[Result]) -> str:
    lines = ["| # | scenario | result | figures |", "| --- | --- | --- | --- |"]
    for r in results:
        shown = "; ".join(f"{f.name}: {f.shown()}" + (f" (bound {f.bound})" if f.bound else "")
                          for f in r.figures)
        lines.append(f"| {r.scenario.number} | {r.scenario.title} | {'pass' if r.passed else 'FAIL'} "
                     f"({r.seconds:.0f} s) | {shown} |")
    for number, why in PENDING.items():
        lines.append(f"| {number} | {why.split(':')[0]} | pending | {why.split(': ', 1)[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the sizes of make test, not of make chaos")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers")
    parser.add_argument("--markdown", type=Path, help="also write the figures as a markdown table here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    mode = "quick" if args.quick else "full"
    scenarios = load_scenarios()
    wanted = {int(n) for n in args.only.split(",") if n.strip()} or set(scenarios)
    chosen = [sc for n, sc in scenarios.items() if n in wanted and sc.sizes(mode) is not None]
    results: list[Result] = []
    with server() as dsn, tempfile.TemporaryDirectory(prefix="pgqueue-chaos-") as folder:
        for sc in chosen:
            print(f"[{sc.number:>2}] {sc.title} ...", flush=True)
            result = run_scenario(sc, dsn, mode, Path(folder))
            results.append(result)
            print(result.report(), flush=True)
    for number, why in PENDING.items():
        if number in wanted:
            print(f"[{number:>2}] pending: {why}")
    if args.markdown:
        args.markdown.write_text(markdown(results))
    passed = sum(r.passed for r in results)
    print(f"chaos: {passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
