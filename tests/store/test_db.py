"""Opening the store: the migrations' head, and a store at it opening without Alembic."""

from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory

from keyshift.store.db import HEAD_REVISION, MIGRATIONS


def test_head_revision_is_the_newest_migration() -> None:
    """A store at HEAD_REVISION skips Alembic on open; a new migration must move it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION
