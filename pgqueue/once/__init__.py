"""Effectively once: transactional handlers, the transactional outbox and its relay, idempotency keys for
outside effects and for enqueues, completion webhooks.

What is exactly once and what is at least once, and why, is in the README ("Effectively once"). Modules:

- ``transactional``: a handler's writes and its job's completion commit in one transaction;
- ``outbox``: messages written in the caller's transaction; ``relay`` delivers them; ``sinks`` take them;
- ``idempotency``: blocks that run once per key; ``enqueue``: one job per idempotency key;
- ``context`` and ``api``: what ``ctx`` and ``app`` offer; ``connections``: the pools handlers use;
- ``conversation``: multi-statement logic written once, run on sync or async connections; ``cli``: commands.

Nothing is imported here, so that ``pgqueue.task`` and ``pgqueue.app`` can import these modules freely.
"""
