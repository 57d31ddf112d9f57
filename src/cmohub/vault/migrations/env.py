"""Alembic environment of the vault: runs on the connection the vault hands over.

The vault runs migrations itself (``cmohub vault init``), on its own connection, with its own
version table (``vault_alembic_version``), so a vault may share a PostgreSQL database with
other Alembic users (Airflow) without either touching the other's version.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from cmohub.errors import ConfigError
from cmohub.vault.schema import VERSION_TABLE, metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise ConfigError(
            "vault migrations run through the vault (cmohub vault init), not the alembic CLI",
            code="VAULT_MIGRATION_INVALID",
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise ConfigError(
        "offline (SQL script) migrations are not supported", code="VAULT_MIGRATION_INVALID"
    )
run_migrations_online()
