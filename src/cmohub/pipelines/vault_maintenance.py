"""Vault maintenance: verify the audit log, sign a checkpoint, back up, rotate keys on schedule.

Run daily by the ``vault_maintenance`` DAG. An audit log that does not verify stops the run
(Terminal: a person must look; nothing is checkpointed over a tampered log). An SQLite vault
is then backed up (:meth:`cmohub.vault.Vault.backup`) to ``vault-<day>.sqlite`` in
``CMOHUB_VAULT_BACKUP_DIR`` (default ``<home>/backups``), keeping the newest
``CMOHUB_VAULT_BACKUP_KEEP`` (default 14; 0: no backups); a backup folder on the same
file system as the vault is reported (``same_disk``, and a warning in the task log): one disk
fault would take both; so is every kept backup that needs a key version the key provider no
longer holds (``unrestorable``: a key deleted after a rotation). Index and KEK rotation run on the
first day of each quarter (or when asked), after the backup, re-indexing and re-wrapping
inside the vault; no COI changes. Results are small dicts for XCom — never identifiers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cmohub.errors import VaultError
from cmohub.log import get_logger
from cmohub.pipelines.context import RunContext
from cmohub.vault import KeyProvider, KeyPurpose, open_vault
from cmohub.vault.backup import needed_keys, vault_file
from cmohub.vault.store import Backend

log = get_logger(__name__)

#: The daily backups' names: the only files this task ever removes.
BACKUP_NAME = re.compile(r"vault-\d{4}-\d{2}-\d{2}\.sqlite")

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


def back_up(context: RunContext) -> dict[str, Any]:
    """Back up an SQLite vault for the run's day, then keep only the newest backups.

    A retry of the same day finds its backup there and keeps it. Only files this task names
    (``vault-YYYY-MM-DD.sqlite``) are ever removed.
    """
    keep = context.settings.vault_backup_keep
    if keep == 0:
        return {"backup": None, "reason": "CMOHUB_VAULT_BACKUP_KEEP is 0"}
    folder = context.settings.vault_backups
    target = folder / f"vault-{context.day.isoformat()}.sqlite"
    vault = open_vault(context.settings)
    keys = vault.key_provider
    try:
        if vault.backend is not Backend.SQLITE:
            return {"backup": None, "reason": "PostgreSQL: backed up with its own tools"}
        already = target.exists()
        if not already:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            vault.backup(target, actor=context.actor())
    finally:
        vault.close()
    removed = _prune(folder, keep)
    unrestorable = _unrestorable(folder, keys)
    same_disk = _same_disk(folder, vault_file(context.settings.vault_database_url))
    if same_disk:
        log.warning(
            "vault backups are on the same file system as the vault (%s): one disk fault loses "
            "both; set CMOHUB_VAULT_BACKUP_DIR to another disk",
            folder,
        )
    return {
        "backup": str(target),
        "already": already,
        "removed": removed,
        "same_disk": same_disk,
        "unrestorable": unrestorable,
    }


def _unrestorable(folder: Path, provider: KeyProvider) -> dict[str, list[str]]:
    """Kept backups that need a key version the provider no longer holds (``kek v1``...): a
    key removed after a rotation. Each is warned about: it cannot be restored until that
    key is back."""
    held = {purpose.value: set(provider.versions(purpose)) for purpose in KeyPurpose}
    found: dict[str, list[str]] = {}
    for path in sorted(_backups(folder)):
        try:
            needs = needed_keys(path)
        except VaultError as error:
            missing = [f"unreadable: {error.message}"]
        else:
            missing = [
                f"{purpose} v{version}"
                for purpose, versions in needs.items()
                for version in sorted(versions - held[purpose])
            ]
        if missing:
            found[path.name] = missing
            log.warning(
                "vault backup %s cannot be restored with the keys there now: it needs %s "
                "(keep a key version as long as a backup needs it)",
                path.name,
                ", ".join(missing),
            )
    return found


def _same_disk(folder: Path, vault_file: Path) -> bool:
    try:
        return os.stat(folder).st_dev == os.stat(vault_file).st_dev
    except OSError:
        return False


def _backups(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if BACKUP_NAME.fullmatch(p.name) and p.is_file()]


def _prune(folder: Path, keep: int) -> list[str]:
    names = sorted(p.name for p in _backups(folder))
    old = names[: max(len(names) - keep, 0)]
    for name in old:
        (folder / name).unlink()
    return old


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
