"""``python -m tests.chaos.keyed DSN OPTION KEY THREADS COUNT START``: concurrent enqueuers racing on one key.

Each thread has a connection of its own (even threads autocommit, odd ones commit an explicit transaction after
each call) and, from wall-clock time START, calls ``app.enqueue('chaos.work', ..., OPTION=KEY, conn=conn)``
COUNT times through the Python API, OPTION being ``idempotency_key`` or ``unique_key``. Prints one JSON line:
how many calls returned each job id, and how many raised (with the first error).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter

import psycopg

from pgqueue.errors import PgQueueError
from tests.chaos.apps import app
from tests.conftest import connect_when_free


def caller(dsn: str, option: str, key: str, count: int, start: float, in_transaction: bool,
           ids: Counter[int], errors: list[str], lock: threading.Lock) -> None:
    mine: Counter[int] = Counter()
    failed: list[str] = []
    with connect_when_free(dsn, autocommit=not in_transaction) as conn:
        time.sleep(max(0.0, start - time.time()))
        for i in range(count):
            try:
                if option == "idempotency_key":
                    job = app.enqueue("chaos.work", kwargs={"n": i}, queue="keyed", conn=conn, idempotency_key=key)
                else:
                    job = app.enqueue("chaos.work", kwargs={"n": i}, queue="keyed", conn=conn, unique_key=key)
                if in_transaction:
                    conn.commit()
                mine[job.id] += 1
            except (PgQueueError, psycopg.Error) as err:
                failed.append(f"{type(err).__name__}: {err}")
                if in_transaction:
                    conn.rollback()
    with lock:
        ids.update(mine)
        errors.extend(failed)


def main() -> None:
    dsn, option, key = sys.argv[1], sys.argv[2], sys.argv[3]
    threads, count, start = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    ids: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    workers = [threading.Thread(target=caller, args=(dsn, option, key, count, start, t % 2 == 1, ids, errors, lock))
               for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"ids": {str(k): v for k, v in ids.items()}, "errors": len(errors),
                      "first_error": errors[0] if errors else None}))


if __name__ == "__main__":
    main()
