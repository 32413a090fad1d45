"""Named SQL, loaded once from the ``sql/`` folder shipped in the wheel.

Every file in ``sql/queries/`` (one per area: ``core.sql``, ``migrate.sql``, ...) is split on
``-- name: <name>`` headers; ``q("job_claim_any")`` is one statement. Names are unique across files.
The folder is found through ``importlib.resources`` (installed wheel: ``pgqueue/sql``) and, in a source
checkout or editable install, beside the package.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def sql_dir() -> Traversable:
    """The folder holding schema.sql, queries/ and migrations/."""
    packaged = resources.files("pgqueue").joinpath("sql")
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parent.parent / "sql"
    if source.is_dir():
        return source
    raise FileNotFoundError("pgqueue's sql/ folder is missing from this installation; reinstall pgqueue")


def parse_named(text: str) -> dict[str, str]:
    """Split a file of ``-- name:`` sections into {name: statement}."""
    parts = _HEADER.split(text)
    named: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in named:
            raise ValueError(f"query {name!r} is defined twice")
        # Full-line comments document the file; they are not sent (and their %(...)s are not placeholders).
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        named[name] = "\n".join(lines).strip().rstrip(";")
    return named


@cache
def queries() -> dict[str, str]:
    named: dict[str, str] = {}
    files = sorted((f for f in sql_dir().joinpath("queries").iterdir() if f.name.endswith(".sql")),
                   key=lambda f: f.name)
    for source in files:
        for name, statement in parse_named(source.read_text(encoding="utf-8")).items():
            if name in named:
                raise ValueError(f"query {name!r} is defined twice (again in {source.name})")
            named[name] = statement
    return named


def q(name: str) -> str:
    """The statement called ``name``; a KeyError names a typo at once."""
    return queries()[name]
