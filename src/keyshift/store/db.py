"""Opening the store: the database URL, SQLite pragmas, Alembic migrations, sessions.

Embedded default: SQLite in WAL mode under `KEYSHIFT_HOME`. Teams point
`KEYSHIFT_DATABASE_URL` at PostgreSQL; the same models and migrations serve both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from keyshift.errors import StoreError

MIGRATIONS = Path(__file__).with_name("migrations")

HEAD_REVISION = "0015"
"""The newest migration's revision. A store already at it opens without loading Alembic
(about 80 ms of every command's start-up); a test keeps it equal to the migrations' head."""


def keyshift_home(env: Mapping[str, str]) -> Path:
    """`KEYSHIFT_HOME`, default `~/.keyshift`; created 0700 on first use."""
    home = Path(env.get("KEYSHIFT_HOME") or Path.home() / ".keyshift").expanduser()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def database_url(env: Mapping[str, str], home: Path) -> str:
    """`KEYSHIFT_DATABASE_URL`, or the embedded SQLite file in the home directory."""
    url = env.get("KEYSHIFT_DATABASE_URL")
    if not url:
        return f"sqlite:///{home / 'keyshift.db'}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the driver keyshift ships with.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _first_line(exc: BaseException) -> str:
    """The driver's own message, first line only: SQLAlchemy appends statements,
    parameters and a documentation link below it."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{cause.__class__.__name__}: {lines[0] if lines else ''}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The pysqlite driver's own transaction handling is switched off so that
    # `_sqlite_begin` can open every transaction with BEGIN IMMEDIATE: writers
    # then queue on the busy timeout instead of failing on a stale snapshot.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_engine(url: str) -> Engine:
    """Create the SQLAlchemy engine; on SQLite switch on WAL and serialised writers."""
    try:
        # A worker runs each of up to 256 rotations at once on a thread and connection of
        # its own (`service.fleet`): connections beyond the pool's five are closed again
        # as they come back, so the overflow costs nothing while the fleet is quiet.
        pooled = make_url(url).database not in (None, "", ":memory:")
        engine = create_engine(
            url,
            future=True,
            pool_pre_ping=not url.startswith("sqlite"),
            **({"max_overflow": 300} if pooled else {}),
        )
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"cannot open the store at {make_url(url)!r}: {_first_line(exc)}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _at_head(connection: Connection) -> bool:
    """Whether the schema is at `HEAD_REVISION` already (a new store has no
    alembic_version table yet)."""
    if not inspect(connection).has_table("alembic_version"):
        return False
    found = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
    return list(found) == [HEAD_REVISION]


def _create(connection: Connection) -> None:
    """Build a new store's schema from the models, at `HEAD_REVISION`: the schema the
    migrations build (a test compares the two), in a few statements instead of running
    every migration since the first (a quarter of a second of the first command)."""
    from keyshift.store.models import Base  # noqa: PLC0415 (only a new store)

    Base.metadata.create_all(connection)
    # The table Alembic keeps its revision in, as Alembic itself creates it.
    connection.execute(
        text(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
    )
    connection.execute(
        text("INSERT INTO alembic_version (version_num) VALUES (:head)"), {"head": HEAD_REVISION}
    )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision. Safe to run on every start."""
    try:
        with engine.begin() as connection:
            if _at_head(connection):
                return
            if not inspect(connection).get_table_names():
                _create(connection)
                return
            from alembic import command  # noqa: PLC0415 (only a store behind its schema)
            from alembic.config import Config  # noqa: PLC0415

            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate the store: {_first_line(exc)}") from exc


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def env_snapshot() -> dict[str, str]:
    return dict(os.environ)
