"""The fault and abuse suite: real processes against real PostgreSQL, figures checked against bounds.

``make chaos`` runs every scenario at full size (``python -m tests.chaos``) and ends with ``chaos: N passed,
M failed``; ``make test`` runs each at a quick size (``tests/chaos/test_chaos.py``). See ``harness``.
"""
