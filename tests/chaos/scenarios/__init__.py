"""The scenarios, one module per kind of fault; importing this package registers them all."""

from tests.chaos.scenarios import workers  # noqa: F401
from tests.chaos.scenarios import database  # noqa: F401
