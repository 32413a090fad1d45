"""The command line every Python driver shares: ``driver.py FIGURE --dsn DSN [--n N] ...``."""

from __future__ import annotations

import argparse


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("figure", help="setup, enqueue_single, enqueue_bulk, process, latency, ...")
    parser.add_argument("--dsn", required=True, help="the system's benchmark database")
    parser.add_argument("--n", type=int, default=10_000, help="jobs")
    parser.add_argument("--procs", type=int, default=1, help="worker processes")
    parser.add_argument("--seconds", type=float, default=30.0, help="stop counting after this long")
    parser.add_argument("--samples", type=int, default=100, help="latency samples")
    parser.add_argument("--concurrency", type=int, default=100, help="jobs at once per worker process")
    parser.add_argument("--queued", type=int, default=1_000_000, help="backlog: queued jobs")
    parser.add_argument("--finished", type=int, default=5_000_000, help="backlog: finished jobs")
    parser.add_argument("--runs", type=int, default=3, help="backlog: runs of each case")
    parser.add_argument("--worker-dsn", help="where workers connect (the round-trip relay); default --dsn")
    return parser.parse_args()
