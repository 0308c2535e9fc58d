"""The fault run takes minutes and has a CI step of its own (`scripts/test tests/faults`), so a
plain `scripts/test` leaves it out: it is collected only when tests/faults (or a file in it) is
named on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.resolve() == HERE / "conftest.py":
        return None
    named = [Path(arg.split("::", 1)[0]).resolve() for arg in config.args]
    if any(path == HERE or HERE in path.parents for path in named):
        return None
    return True
