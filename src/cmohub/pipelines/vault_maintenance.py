"""Vault maintenance: verify the audit log, sign a checkpoint, rotate keys on schedule.

Run daily by the ``vault_maintenance`` DAG. An audit log that does not verify stops the run
(Terminal: a person must look; nothing is checkpointed over a tampered log). Index and KEK
rotation run on the first day of each quarter (or when asked), re-indexing and re-wrapping
inside the vault; no COI changes. Results are small dicts for XCom — never identifiers.
"""

from __future__ import annotations

from typing import Any

from cmohub.errors import VaultError
from cmohub.pipelines.context import RunContext
from cmohub.vault import open_vault

ROTATION_MONTHS = (1, 4, 7, 10)


def verify_and_checkpoint(context: RunContext) -> dict[str, Any]:
    """Verify the whole audit log, then sign a checkpoint of it."""
    vault = open_vault(context.settings)
    try:
        verification = vault.verify_audit()
        if not verification.intact:
            raise VaultError(
                f"audit log does not verify: {verification.reason}",
                code="VAULT_AUDIT_TAMPERED",
                where=f"event {verification.first_bad_seq}",
            )
        checkpoint = vault.checkpoint()
        return {
            "events": verification.events,
            "checkpoint_size": checkpoint.size,
            "root": checkpoint.root,
            "key_id": checkpoint.key_id,
        }
    finally:
        vault.close()


def rotation_due(context: RunContext) -> bool:
    day = context.day
    return day.day == 1 and day.month in ROTATION_MONTHS


def rotate_keys_if_due(context: RunContext, *, force: bool = False) -> dict[str, Any]:
    """Rotate the index key and the KEK on the first day of a quarter (or when forced)."""
    if not (force or rotation_due(context)):
        return {"rotated": False}
    vault = open_vault(context.settings)
    try:
        actor = context.actor()
        index = vault.rotate_index_key(actor=actor)
        kek = vault.rotate_kek(actor=actor)
        return {
            "rotated": True,
            "index": [index.from_version, index.to_version, index.rows],
            "kek": [kek.from_version, kek.to_version, kek.rows],
        }
    finally:
        vault.close()
