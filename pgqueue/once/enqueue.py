"""Enqueue with an idempotency key (one job per key, whoever asks and however often) or a callback URL.

The job is inserted the way the core inserts any job (``core:insert_job``, supplied by the App, so unique keys
and dependencies work as usual), then the key is claimed for it (``enqueue_key_claim``). A concurrent caller
with the same key blocks in its claim until the first caller's transaction ends, then reads the winner's job id
in that same statement, rolls back to a savepoint taken before its own insert, and returns the winner's job. So
any number of concurrent callers make one job and all get its id; a caller whose transaction rolls back leaves
neither job nor key, and the next caller makes the job. A key lives for ``app.idempotency_ttl`` (default one
day); after that the same key makes a new job.
"""

from __future__ import annotations

from typing import Any

from pgqueue.errors import JobNotFound, ValidationError
from pgqueue.once.conversation import Conversation, Rows

# The step the App answers with its own insert of one job: it returns [(id, state, scheduled_for, created_at)].
INSERT_JOB = "core:insert_job"


def enqueue(params: dict[str, Any], key: str | None, ttl: float, callback_url: str | None
            ) -> Conversation[tuple[bool, Rows]]:
    """Insert the job (the App's insert params). Returns (True, the insert's rows) for a job made here as asked,
    or (False, job_get rows) for a job read back: the key's owner, or what a unique key resolved to."""
    task = params["task"]
    if key is not None:
        owner = yield "enqueue_key_get", {"key": key}
        if owner:
            return False, (yield from _existing(owner[0][0], key, task))
        yield "enqueue_key_savepoint", {}
    inserted = yield INSERT_JOB, params
    job_id = inserted[0][0]
    if callback_url is not None:
        yield "job_callback_insert", {"job_id": job_id, "url": callback_url}
    if key is not None:
        claimed = yield "enqueue_key_claim", {"key": key, "job_id": job_id, "ttl": ttl}
        owner_id = claimed[0][0]
        if owner_id != job_id:
            yield "enqueue_key_rollback", {}
            yield "enqueue_key_release", {}
            return False, (yield from _existing(owner_id, key, task))
        yield "enqueue_key_release", {}
    if params.get("unique_key") is not None:  # the insert may have returned the key holder, not a new job
        return False, (yield "job_get", {"id": job_id})
    return True, inserted


def _existing(job_id: int, key: str, task: str) -> Conversation[Rows]:
    rows = yield "job_get", {"id": job_id}
    if not rows:
        raise JobNotFound(f"idempotency key {key!r} belongs to job {job_id}, which has since been pruned; "
                          "use a new key (or keep finished jobs longer than app.idempotency_ttl)")
    if rows[0][2] != task:
        raise ValidationError(f"idempotency key {key!r} already belongs to job {job_id} of task {rows[0][2]!r}, "
                              f"not {task!r}; give each task its own keys")
    return rows
