"""The quick slice of the chaos suite inside ``make test``: every scenario at its quick size.

Each test fails with the figures that missed their bounds; ``make chaos`` runs the full sizes and the soak.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import Scenario, load_scenarios, run_scenario

QUICK = [sc for sc in load_scenarios().values() if sc.quick is not None]


@pytest.mark.chaos
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sc", QUICK, ids=[f"{sc.number:02d}-{sc.title.replace(' ', '-')}" for sc in QUICK])
def test_scenario(sc: Scenario, server_dsn: str, tmp_path: Path) -> None:
    result = run_scenario(sc, server_dsn, "quick", tmp_path)
    print("\n" + result.report())
    assert result.passed, f"scenario {sc.number} ({sc.title}): {result.failure()}\n{result.report()}"
