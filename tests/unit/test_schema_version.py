"""`health` checks the database against SCHEMA_VERSION, so it must name the newest migration."""

from __future__ import annotations

from shared.migrate import SCHEMA_VERSION, discover


def test_schema_version_is_the_newest_migration():
    newest = discover()[-1]
    assert newest.version == SCHEMA_VERSION, (
        f"a migration was added ({newest.path.name}): set SCHEMA_VERSION in "
        f"shared/migrate/__init__.py to {newest.version!r}"
    )
