"""Opaque pagination cursors: the keyset of the last row of a page, base64url-encoded.

::

    cursor = encode("j", 1234)           # the next page of jobs starts below id 1234
    (job_id,) = decode("j", cursor, 1)   # 422 naming ?cursor= when it is not one of ours
"""

from __future__ import annotations

import base64
import binascii

from pgqueue.web.problems import invalid


def encode(kind: str, *parts: object) -> str:
    raw = "|".join([kind, *(str(p) for p in parts)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(kind: str, cursor: str, count: int) -> list[str]:
    """The parts of ``cursor``, which must be of ``kind`` with ``count`` parts."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid("cursor", "is not a cursor returned by this API", "query") from None
    parts = raw.split("|")
    if len(parts) != count + 1 or parts[0] != kind:
        raise invalid("cursor", "is not a cursor returned by this endpoint", "query")
    return parts[1:]
