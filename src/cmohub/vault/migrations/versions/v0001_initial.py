"""The vault: COIs with blind indexes and sealed identifiers, aliases, data keys, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "vault_meta",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_vault_meta"),
    )
    op.create_table(
        "vault_data_key",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_vault_data_key"),
    )
    op.create_table(
        "vault_coi",
        sa.Column("coi", sa.String(16), nullable=False),
        sa.Column("subject", sa.LargeBinary(32), nullable=True),
        sa.Column("event", sa.LargeBinary(32), nullable=True),
        sa.Column("index_version", sa.Integer(), nullable=True),
        sa.Column("data_key_id", sa.String(32), nullable=True),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
        sa.Column("demo_family", sa.LargeBinary(16), nullable=True),
        sa.Column("demo_given", sa.LargeBinary(16), nullable=True),
        sa.Column("demo_birth", sa.LargeBinary(16), nullable=True),
        sa.Column("demo_version", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("origin", sa.String(12), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_role", sa.String(64), nullable=False),
        sa.Column("created_feed", sa.String(200), nullable=True),
        sa.Column("withdrawn_at", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("coi", name="pk_vault_coi"),
        sa.ForeignKeyConstraint(
            ["data_key_id"], ["vault_data_key.id"], name="fk_vault_coi_data_key_id"
        ),
    )
    op.create_index("ux_vault_coi_subject_event", "vault_coi", ["subject", "event"], unique=True)
    op.create_table(
        "vault_alias",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("retired", sa.LargeBinary(32), nullable=False),
        sa.Column("survivor", sa.LargeBinary(32), nullable=False),
        sa.Column("index_version", sa.Integer(), nullable=False),
        sa.Column("data_key_id", sa.String(32), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_vault_alias"),
        sa.UniqueConstraint("retired", name="uq_vault_alias_retired"),
        sa.ForeignKeyConstraint(
            ["data_key_id"], ["vault_data_key.id"], name="fk_vault_alias_data_key_id"
        ),
    )
    op.create_index("ix_vault_alias_survivor", "vault_alias", ["survivor"])
    op.create_table(
        "vault_audit",
        sa.Column("seq", _SEQ, nullable=False, autoincrement=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("feed", sa.String(200), nullable=True),
        sa.Column("purpose", sa.Text(), nullable=True),
        sa.Column("ticket", sa.String(200), nullable=True),
        sa.Column("coi", sa.String(16), nullable=True),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_vault_audit"),
    )
    op.create_table(
        "vault_checkpoint",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_vault_checkpoint"),
    )


def downgrade() -> None:
    for table in (
        "vault_checkpoint",
        "vault_audit",
        "vault_alias",
        "vault_coi",
        "vault_data_key",
        "vault_meta",
    ):
        op.drop_table(table)
