"""Where a worker's next claim starts: the head of the queue, or on from its last claim.

A claimed job leaves its entry at the head of the claim index until vacuum removes it, and vacuum may not while
a snapshot older than the claim is open anywhere in the database (a REPEATABLE READ report, ``pg_dump``). A
claim from the head walks every such entry, and visits its row to find it gone: with a snapshot held, the claim
grows dearer with every job claimed (3.5x its latency after 36,500 claims, in chaos scenario 10). So while a
worker drains a backlog it claims on from the last job it took (``job_claim_any_after``, or
``job_claim_queue_after`` for a worker serving one queue): the index scan starts there, and what lies behind
costs nothing however much of it there is.

Jobs can become claimable behind that position: one of higher priority, a job handed back or reclaimed, a
scheduled job come due, a queue that stops being paused or limited, a row another transaction held locked when
the claim passed it, a priority raised by aging. The first four come with a notification, which sends the next
claim back to the head; for the rest, a claim goes back to the head at least every ``HEAD_EVERY`` seconds. A
claim from the head that finds fewer jobs than it asked for (the backlog is gone) leaves no position, so a
worker that keeps up with its queue always claims from the head: one statement per claim, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

HEAD_EVERY = 1.0  # seconds: the longest a claimable job behind a worker's position can wait for it


class ClaimPosition:
    """One claimer's position in the claim index: the last column of every ``job_claim_*`` claim but the
    controlled queues' one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._after: str | None = None  # 'priority,id,scheduled_for' of the last job claimed
        self._head_at = float("-inf")  # when the last claim from the head ran
        self.epoch = 0  # moves on at each forget(): a claim begun before then must not set a position

    @property
    def after(self) -> str | None:
        """The position the next claim goes on from, or None: claim from the head."""
        if self._after is not None and self._clock() - self._head_at >= HEAD_EVERY:
            self._after = None
        return self._after

    def forget(self) -> None:
        """Something may have arrived ahead of the position (a notification): the next claim starts at the head."""
        self._after = None
        self.epoch += 1

    def claimed(self, rows: Sequence[Sequence[Any]], asked: int, from_head: bool, epoch: int) -> None:
        """Note what a claim begun at ``epoch`` returned (rows of a ``job_claim_*`` claim; the position is their
        last column). A claim from the head that ran short of ``asked`` leaves no position: no
        backlog to go on in. Nor does a claim under way when a notification came: its snapshot may predate the
        job the notification announced, so the next claim must start at the head to see it."""
        if epoch != self.epoch:
            return
        if from_head:
            self._head_at = self._clock()
            self._after = rows[-1][-1] if len(rows) >= asked else None
        elif rows:
            self._after = rows[-1][-1]
