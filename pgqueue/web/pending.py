"""Endpoints of features that have not landed: each answers 501 with a JSON body naming the feature, after the
same scope check it will have. None is in the OpenAPI document. Replace a stub with its router when its feature
merges. (Batches, schedules, queue pause and limits, unique keys and dependencies came with issue 3 and are
served by ``schedules``, ``queues`` and ``jobs``.)

- idempotency keys (issue 4) are refused by POST /jobs with a 501 (see ``jobs``).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
