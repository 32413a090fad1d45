"""The scenarios, one module per kind of fault; importing this package registers them all."""

from tests.chaos.scenarios import database, inputs, privileges, soak, workers

__all__ = ["database", "inputs", "privileges", "soak", "workers"]
