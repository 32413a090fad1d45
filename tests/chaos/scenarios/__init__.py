"""The scenarios, one module per kind of fault; importing this package registers them all."""

from tests.chaos.scenarios import backlog, clock, cron, database, inputs, keys, privileges, soak, workers

__all__ = ["backlog", "clock", "cron", "database", "inputs", "keys", "privileges", "soak", "workers"]
