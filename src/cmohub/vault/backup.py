"""A backup of an SQLite vault: a consistent copy, made while pipelines keep writing.

Copying ``vault.sqlite`` with ``cp`` while a pipeline writes can give a file that misses
committed batches (they may still be in ``vault.sqlite-wal``) or does not open at all.
:func:`copy_database` uses SQLite's online backup instead, which copies a consistent
snapshot of the database, committed write-ahead log included. The copy is written aside
(mode 0600), then :meth:`cmohub.vault.Vault.backup` checks it with the vault's keys, and
:func:`place` moves it to its name without ever replacing a file that is there.

What the backup holds: the COIs, blind indexes, sealed identifiers, data keys (wrapped by the
KEK), the audit log and its checkpoints. Not the keys: without the index key no identifier is
found again, without the KEK none is revealed, so they are kept elsewhere, apart from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import uuid
from pathlib import Path

from cmohub.errors import VaultError
from cmohub.lake import fsync_dir

_SIDE_FILES = ("-wal", "-shm", "-journal")


def partial_path(target: Path) -> Path:
    """Where the copy of ``target`` is made before it is checked (same folder: same disk)."""
    return target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")


def check_target(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise VaultError(
            "the backup file exists already: choose a new name (a backup never replaces one)",
            code="VAULT_BACKUP_EXISTS",
            where=str(target),
        )
    if not target.parent.is_dir():
        raise VaultError(
            "the folder for the backup does not exist",
            code="VAULT_BACKUP_FAILED",
            where=str(target),
        )


def copy_database(source: sqlite3.Connection, partial: Path) -> None:
    """SQLite's online backup of ``source`` into the new file ``partial`` (mode 0600)."""
    try:
        os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        target = sqlite3.connect(partial)
        try:
            source.backup(target)
        finally:
            target.close()
    except (OSError, sqlite3.Error) as error:
        discard(partial)
        raise VaultError(
            f"the backup could not be written ({type(error).__name__})",
            code="VAULT_BACKUP_FAILED",
            where=str(partial.parent),
        ) from None


def finish(partial: Path) -> str:
    """Make the checked copy one self-contained file (no write-ahead log), check SQLite's
    integrity, fsync it; return its SHA-256."""
    try:
        connection = sqlite3.connect(partial, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=DELETE").fetchone()
            result = connection.execute("PRAGMA integrity_check").fetchone()
        finally:
            connection.close()
        if result is None or result[0] != "ok":
            raise VaultError("the copy fails SQLite's integrity check", code="VAULT_BACKUP_FAILED")
        digest = hashlib.sha256()
        with open(partial, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            os.fsync(handle.fileno())
    except (OSError, sqlite3.Error) as error:
        raise VaultError(
            f"the backup could not be checked ({type(error).__name__})",
            code="VAULT_BACKUP_FAILED",
            where=str(partial.parent),
        ) from None
    return digest.hexdigest()


def place(partial: Path, target: Path) -> None:
    """Give the finished copy its name: a hard link (fails if the name is taken meanwhile,
    where a rename would replace that file), then the temporary name goes."""
    try:
        os.link(partial, target)
    except FileExistsError:
        raise VaultError(
            "the backup file was created by someone else meanwhile: choose a new name",
            code="VAULT_BACKUP_EXISTS",
            where=str(target),
        ) from None
    except OSError as error:
        raise VaultError(
            f"the backup could not be put in place ({type(error).__name__})",
            code="VAULT_BACKUP_FAILED",
            where=str(target),
        ) from None
    finally:
        discard(partial)
    fsync_dir(target.parent)


def discard(partial: Path) -> None:
    """Remove a copy that was not finished, and any file SQLite kept beside it."""
    for suffix in ("", *_SIDE_FILES):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{partial}{suffix}").unlink()
