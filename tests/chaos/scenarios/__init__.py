"""The scenarios, one module per kind of fault; importing this package registers them all."""

from tests.chaos.scenarios import clock, database, inputs, privileges, soak, workers

__all__ = ["clock", "database", "inputs", "privileges", "soak", "workers"]
