"""Backups of an SQLite vault, and restoring one: the files' side.

A backup is a consistent copy, made while pipelines keep writing.

Copying ``vault.sqlite`` with ``cp`` while a pipeline writes can give a file that misses
committed batches (they may still be in ``vault.sqlite-wal``) or does not open at all.
:func:`copy_database` uses SQLite's online backup instead, which copies a consistent
snapshot of the database, committed write-ahead log included. The copy is written aside
(mode 0600), then :meth:`cmohub.vault.Vault.backup` checks it with the vault's keys, and
:func:`place` moves it to its name without ever replacing a file that is there.

What the backup holds: the COIs, blind indexes, sealed identifiers, data keys (wrapped by the
KEK), the audit log and its checkpoints. Not the keys: without the index key no identifier is
found again, without the KEK none is revealed, so they are kept elsewhere, apart from it.

A restore (:meth:`cmohub.vault.Vault.restore`) copies a backup the same way, read-only (the
backup file is never changed), next to the vault file; checks the copy with the keys; finds
which COIs of the vault it replaces the backup lacks (:func:`take_over`); moves that
vault aside, never deleting it (:func:`move_aside`); and gives the copy the vault's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cmohub.errors import ConfigError, VaultError
from cmohub.lake import fsync_dir
from cmohub.vault.store import parse_vault_url, sqlite_database, vault_in_use

_SIDE_FILES = ("-wal", "-shm", "-journal")
_IN_USE_TIMEOUT_S = 2.0


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


def copy_database(source: sqlite3.Connection, partial: Path, *, kind: str = "BACKUP") -> None:
    """SQLite's online backup of ``source`` into the new file ``partial`` (mode 0600).

    ``kind`` names the operation in error codes (``VAULT_<kind>_FAILED``)."""
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
            f"the copy could not be written ({type(error).__name__})",
            code=f"VAULT_{kind}_FAILED",
            where=str(partial.parent),
        ) from None


def finish(partial: Path, *, kind: str = "BACKUP") -> str:
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
            raise VaultError("the copy fails SQLite's integrity check", code=f"VAULT_{kind}_FAILED")
        with open(partial, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            os.fsync(handle.fileno())
    except (OSError, sqlite3.Error) as error:
        raise VaultError(
            f"the copy could not be checked ({type(error).__name__})",
            code=f"VAULT_{kind}_FAILED",
            where=str(partial.parent),
        ) from None
    return digest


def place(partial: Path, target: Path, *, kind: str = "BACKUP") -> None:
    """Give the finished copy its name: a hard link (fails if the name is taken meanwhile,
    where a rename would replace that file), then the temporary name goes."""
    try:
        os.link(partial, target)
    except FileExistsError:
        raise VaultError(
            "a file of that name was created by someone else meanwhile",
            code=f"VAULT_{kind}_EXISTS",
            where=str(target),
        ) from None
    except OSError as error:
        raise VaultError(
            f"the copy could not be put in place ({type(error).__name__})",
            code=f"VAULT_{kind}_FAILED",
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


# --- restore ---------------------------------------------------------------------------------

_SQLITE_HEADER = b"SQLite format 3\x00"


def vault_file(url: str) -> Path:
    """The file of an SQLite vault URL (VAULT_RESTORE_UNSUPPORTED for any other store)."""
    database = sqlite_database(parse_vault_url(url))
    if database is None:
        raise ConfigError(
            "only an SQLite vault file is restored from a backup here; a PostgreSQL vault is "
            "restored with PostgreSQL's own tools (pg_restore, base backups)",
            code="VAULT_RESTORE_UNSUPPORTED",
        )
    return Path(os.path.abspath(Path(database).expanduser()))


def read_backup(source: Path) -> str:
    """The SHA-256 of the backup file, once it is seen to be a readable SQLite file."""
    try:
        with open(source, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise IsADirectoryError
            if handle.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                raise VaultError(
                    "the backup file is not an SQLite database",
                    code="VAULT_RESTORE_FAILED",
                    where=str(source),
                )
            handle.seek(0)
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        raise VaultError(
            f"the backup file cannot be read ({type(error).__name__})",
            code="VAULT_RESTORE_FAILED",
            where=str(source),
        ) from None


def copy_backup(source: Path, partial: Path) -> None:
    """Copy the backup file into the new file ``partial``, opening it read-only (a backup is
    never changed by restoring it)."""
    with _read_only(source, "VAULT_RESTORE_FAILED") as connection:
        copy_database(connection, partial, kind="RESTORE")


def occupied(target: Path) -> bool:
    """Whether a vault is at ``target``: a file with content, or a journal beside it. (An
    empty file is what opening a missing vault leaves behind: it holds nothing.)"""
    for suffix in ("-wal", "-journal"):
        side = Path(f"{target}{suffix}")
        if side.exists() and side.stat().st_size:
            return True
    return target.is_symlink() or (target.exists() and target.stat().st_size > 0)


@dataclass(frozen=True, slots=True)
class Replaced:
    """What the vault a restore replaces holds, as far as it can be read."""

    lost: tuple[tuple[str, str], ...] | None  # (COI, status) the restored copy lacks; None
    # when it could not be read
    unreadable: str = ""  # why it could not be read
    # Its audit events after the backup's last one, by type (they stay in the replaced file
    # only: reveals among them are evidence); None if its log does not continue the
    # backup's (its event at the backup's last sequence number differs, or is missing).
    events_after: dict[str, int] | None = None


def _open_current(target: Path) -> sqlite3.Connection:
    return sqlite3.connect(
        target.as_uri(), uri=True, timeout=_IN_USE_TIMEOUT_S, isolation_level=None
    )


def identity_of(target: Path) -> str | None:
    """The vault ID of the vault at ``target`` (read only); None if it cannot be read."""
    try:
        connection = _open_current(target)
        try:
            row = connection.execute(
                "SELECT value FROM vault_meta WHERE name = 'vault_id'"
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def take_over(target: Path, restored: Path) -> Replaced:
    """Make sure no other process has the vault at ``target`` open (VAULT_RESTORE_IN_USE),
    then read which of its COIs ``restored`` lacks, and which audit events after it.

    Its journal mode is set to DELETE: SQLite allows that only to the one connection a
    database has (this catches any SQLite client; the caller already holds the file against
    the vault's own connections, :func:`cmohub.vault.store.own_vault_file`), and it folds the
    write-ahead log into the file, so that the vault moved aside is one self-contained file.
    Only COIs are read, no identifier.
    """
    try:
        connection = _open_current(target)
    except sqlite3.Error as error:
        return Replaced(None, type(error).__name__)
    try:
        try:
            row = connection.execute("PRAGMA journal_mode=DELETE").fetchone()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                return Replaced(None, type(error).__name__)
            row = None
        except sqlite3.DatabaseError as error:
            return Replaced(None, type(error).__name__)
        if row is None or str(row[0]).lower() != "delete":
            raise vault_in_use(target)
        try:
            connection.execute("ATTACH DATABASE ? AS restored", (f"{restored.as_uri()}?mode=ro",))
            lost = connection.execute(
                "SELECT coi, status FROM main.vault_coi "
                "WHERE coi NOT IN (SELECT coi FROM restored.vault_coi) ORDER BY coi"
            ).fetchall()
            continues = connection.execute(
                "SELECT COUNT(*) FROM main.vault_audit AS m JOIN restored.vault_audit AS r "
                "ON m.seq = r.seq AND m.hash = r.hash "
                "WHERE r.seq = (SELECT COALESCE(MAX(seq), 0) FROM restored.vault_audit)"
            ).fetchone()[0]
            after = connection.execute(
                "SELECT event, COUNT(*) FROM main.vault_audit "
                "WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM restored.vault_audit) "
                "GROUP BY event ORDER BY event"
            ).fetchall()
        except sqlite3.Error as error:
            return Replaced(None, type(error).__name__)
        return Replaced(
            tuple((str(c), str(s)) for c, s in lost),
            events_after={str(e): int(n) for e, n in after} if continues else None,
        )
    finally:
        connection.close()


def aside_path(target: Path, stamp: str) -> Path:
    """A free name ``<vault file>.replaced-<stamp>`` for the vault a restore replaces."""
    for attempt in range(100):
        aside = target.with_name(
            f"{target.name}.replaced-{stamp}" + (f"-{attempt}" if attempt else "")
        )
        if not any(Path(f"{aside}{s}").exists() for s in ("", *_SIDE_FILES)):
            return aside
    raise VaultError(
        "no free name to move the vault aside", code="VAULT_RESTORE_FAILED", where=str(target)
    )


def move_aside(target: Path, aside: Path) -> None:
    """Rename the vault at ``target``, and any journal beside it, to ``aside``."""
    moved: list[str] = []
    try:
        for suffix in ("", *_SIDE_FILES):
            source = Path(f"{target}{suffix}")
            if source.exists() or source.is_symlink():
                source.rename(f"{aside}{suffix}")
                moved.append(suffix)
    except OSError as error:
        _rename_back(aside, target, moved)
        raise VaultError(
            f"the vault could not be moved aside ({type(error).__name__})",
            code="VAULT_RESTORE_FAILED",
            where=str(target),
        ) from None
    fsync_dir(target.parent)


def move_back(aside: Path, target: Path) -> None:
    """Undo :func:`move_aside` (the restore failed after it)."""
    _rename_back(aside, target, [s for s in ("", *_SIDE_FILES) if Path(f"{aside}{s}").exists()])
    fsync_dir(target.parent)


def _rename_back(aside: Path, target: Path, suffixes: list[str]) -> None:
    for suffix in suffixes:
        with contextlib.suppress(OSError):
            os.rename(f"{aside}{suffix}", f"{target}{suffix}")


# --- the keys a backup needs -----------------------------------------------------------------


def needed_keys(path: Path) -> dict[str, set[int]]:
    """The key versions restoring the backup at ``path`` needs, by purpose (read only):
    the active index key, the KEK of each data key, the audit key of each checkpoint.
    VAULT_BACKUP_FAILED if it cannot be read."""
    with _read_only(path, "VAULT_BACKUP_FAILED") as connection:
        index = connection.execute(
            "SELECT value FROM vault_meta WHERE name = 'index_version'"
        ).fetchall()
        kek = connection.execute("SELECT DISTINCT kek_version FROM vault_data_key").fetchall()
        audit = connection.execute(
            "SELECT DISTINCT key_version FROM vault_checkpoint "
            "UNION SELECT value FROM vault_meta WHERE name = 'audit_version'"
        ).fetchall()
    return {
        "index": {int(row[0]) for row in index},
        "kek": {int(row[0]) for row in kek},
        "audit": {int(row[0]) for row in audit},
    }


@contextlib.contextmanager
def _read_only(path: Path, code: str) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the backup at ``path``; ``code`` for any SQLite error in the
    block (a file that is not a database, a missing table)."""
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            yield connection
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise VaultError(
            f"the backup cannot be read ({type(error).__name__})", code=code, where=str(path)
        ) from None
