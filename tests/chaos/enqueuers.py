"""``python -m tests.chaos.enqueuers DSN THREADS SECONDS START:MODE [START:MODE ...]``: concurrent enqueuers,
each on a connection of its own calling ``pgqueue.enqueue`` one job per transaction, in windows of SECONDS
beginning at the given wall-clock times; prints how many jobs they enqueued in each window (space-separated).

MODE ``on`` enqueues as usual; ``off`` first sets ``pgqueue.notify = off`` in the session (no notifications).
Several such processes run at once, so the clients' Python is not what limits the rate; between windows they
are idle, so the orchestrator can change the table (disable the notify trigger) without contention.
"""

from __future__ import annotations

import sys
import threading
import time

import psycopg


def enqueuer(dsn: str, windows: list[tuple[float, str]], seconds: float, counts: list[list[int]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i, (start, mode) in enumerate(windows):
            conn.execute("SET pgqueue.notify = 'off'" if mode == "off" else "RESET pgqueue.notify")
            time.sleep(max(0.0, start - time.time()))
            count, end = 0, start + seconds
            while time.time() < end:
                conn.execute("SELECT pgqueue.enqueue('chaos.work', '{}', queue => 'contention')")
                count += 1
            counts[i].append(count)


def main() -> None:
    dsn, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    windows = [(float(start), mode) for start, mode in (w.split(":") for w in sys.argv[4:])]
    counts: list[list[int]] = [[] for _ in windows]
    workers = [threading.Thread(target=enqueuer, args=(dsn, windows, seconds, counts)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(" ".join(str(sum(c)) for c in counts))


if __name__ == "__main__":
    main()
