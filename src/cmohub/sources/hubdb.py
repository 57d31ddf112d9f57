"""The hub's operational database (``CMOHUB_HUB_DB_URL``; SQLite by default, PostgreSQL in
production), where the file registry and the seen-record memory keep their tables.

One place opens it and turns its failures into ours: a URL SQLAlchemy cannot read is
:class:`~cmohub.errors.ConfigError`; a database or driver failure is
:class:`~cmohub.errors.StoreUnavailable` (Transient: the task is retried).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from cmohub.errors import ConfigError, StoreUnavailable


def hub_engine(url: str) -> sa.Engine:
    """An engine for the hub database at ``url``."""
    try:
        return sa.create_engine(url)
    except ArgumentError as error:
        raise ConfigError("invalid hub database URL", where="CMOHUB_HUB_DB_URL") from error


@contextmanager
def reachable() -> Iterator[None]:
    """Run a block against the hub database; its failures raise StoreUnavailable."""
    try:
        yield
    except (OperationalError, DBAPIError) as error:
        raise StoreUnavailable("the hub database is unreachable") from error


def create_tables(metadata: sa.MetaData, engine: sa.Engine) -> None:
    """Create the tables of ``metadata`` that do not exist yet."""
    with reachable():
        metadata.create_all(engine)


def insert_ignoring_conflicts(engine: sa.Engine, table: sa.Table, key: str) -> sa.Insert:
    """``INSERT … ON CONFLICT (key) DO NOTHING`` in the engine's dialect (the atomic claim)."""
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_nothing(index_elements=[key])
