"""Keyset cursors of the dead-letter list: the (finished_at, id) of the last row of a page, as
``<microseconds since the epoch>_<id>``. Any string of that shape is a valid cursor: values past the ends of
time or of bigint are clamped, so a cursor never fails, it only pages from where it points.

::

    cursor = encode_dead(row.finished_at, row.id)   # "1763827200123456_42"
    finished_at, job_id = decode_dead(cursor)
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_MICROS = int((datetime(9999, 12, 31, tzinfo=timezone.utc) - EPOCH) / timedelta(microseconds=1))
MAX_ID = 2**63 - 1


def encode_dead(finished_at: datetime, job_id: int) -> str:
    return f"{(finished_at - EPOCH) // timedelta(microseconds=1)}_{job_id}"


def decode_dead(cursor: str) -> tuple[datetime, int]:
    micros, _, job_id = cursor.partition("_")
    return EPOCH + timedelta(microseconds=min(int(micros), MAX_MICROS)), min(int(job_id), MAX_ID)
