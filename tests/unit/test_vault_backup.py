"""``Vault.backup`` / ``cmohub vault backup``: a consistent, checked copy of an SQLite vault.

What a data engineer relies on: the copy opens with the same keys and answers every lookup
and reveal as the vault did; it is safe to take while a pipeline writes; it never replaces a
file; a failed backup leaves nothing behind; and the audit log says who took it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from tests.vault_support import ENGINEER, OFFICER, ROLES, SERVICE, canary_requests

from cmohub.errors import ConfigError, CryptoError, VaultError
from cmohub.identity import TokenizeRequest
from cmohub.pipelines import vault_maintenance
from cmohub.pipelines.context import RunContext
from cmohub.settings import load_settings
from cmohub.vault import (
    AuditStatus,
    FileKeyProvider,
    MemoryKeyProvider,
    Vault,
    open_vault,
)


def requests(start: int, count: int) -> list[TokenizeRequest]:
    return canary_requests("BKP", start, count)


@pytest.fixture
def keys() -> MemoryKeyProvider:
    return MemoryKeyProvider.generated()


@pytest.fixture
def vault(tmp_path: Path, keys: MemoryKeyProvider) -> Vault:
    v = Vault(f"sqlite:///{tmp_path / 'vault.sqlite'}", keys, roles=ROLES)
    v.init(actor=SERVICE)
    return v


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_the_backup_answers_every_lookup_and_reveal_as_the_vault_did(
    vault: Vault, keys: MemoryKeyProvider, tmp_path: Path
) -> None:
    cois = vault.tokenize_many(requests(0, 300), actor=SERVICE)
    vault.withdraw(str(cois[0]), actor=OFFICER, reason="consent withdrawn, form CW-1")
    vault.rotate_index_key(actor=SERVICE)  # the copy needs the active versions, not v1
    target = tmp_path / "backups" / "vault-2026-11-26.sqlite"
    target.parent.mkdir()

    result = vault.backup(target, actor=ENGINEER)

    assert result.path == str(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # one file, no WAL
    assert (
        result.checked.cois_active,
        result.checked.cois_withdrawn,
        result.checked.data_keys,
    ) == (299, 1, 1)
    assert result.checked.key_versions == {"index": 2, "kek": 1, "audit": 1}
    assert result.size == target.stat().st_size
    with sqlite3.connect(target) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"

    copy = Vault.open(f"sqlite:///{target}", keys, roles=ROLES)
    try:
        assert copy.lookup_many(requests(0, 300), actor=SERVICE) == [None, *cois[1:]]
        revealed = copy.reveal(str(cois[7]), actor=OFFICER, purpose="restore test", ticket="T-1")
        assert revealed.identity.value.reveal() == "CANARY-MRN-BKP-00007"
        verification = copy.verify_audit(witnesses=[result.checkpoint])
        assert verification.status is AuditStatus.INTACT
    finally:
        copy.close()

    # The vault's own log says who took it, and the copy holds that event and its checkpoint.
    records = vault.audit_records(since=date(2000, 1, 1), actor=OFFICER)
    (export,) = [r for r in records if r.event == "export" and r.purpose == "database backup"]
    assert (export.actor, export.role) == ("bob", "data_engineer")
    assert target.name in export.details
    assert result.checkpoint.size == result.checked.audit_events == export.seq  # it is the last one


def test_a_backup_taken_while_a_pipeline_writes_is_consistent(
    vault: Vault, keys: MemoryKeyProvider, tmp_path: Path
) -> None:
    vault.tokenize_many(requests(0, 100), actor=SERVICE)
    stop = threading.Event()
    written: list[int] = []

    def pipeline() -> None:
        start = 100
        while not stop.is_set():
            vault.tokenize_many(requests(start, 50), actor=SERVICE)
            start += 50
            written.append(start)

    writer = threading.Thread(target=pipeline)
    writer.start()
    try:
        results = [vault.backup(tmp_path / f"b{i}.sqlite", actor=ENGINEER) for i in range(3)]
    finally:
        stop.set()
        writer.join()

    assert written  # the pipeline ran alongside
    for result in results:
        copy = Vault.open(f"sqlite:///{result.path}", keys)
        try:
            assert copy.verify_audit().status is AuditStatus.INTACT
            status = copy.status()
            # Whole batches only: 100, then 50 at a time.
            assert status.cois_active == result.checked.cois_active
            assert (status.cois_active - 100) % 50 == 0
        finally:
            copy.close()
    assert leftovers(tmp_path) == []


def test_a_backup_never_replaces_a_file_and_leaves_nothing_when_it_fails(
    vault: Vault, tmp_path: Path
) -> None:
    taken = tmp_path / "taken.sqlite"
    taken.write_bytes(b"someone's file")
    with pytest.raises(VaultError) as exists:
        vault.backup(taken, actor=ENGINEER)
    assert exists.value.code == "VAULT_BACKUP_EXISTS" and str(taken) in str(exists.value)
    assert taken.read_bytes() == b"someone's file"

    with pytest.raises(VaultError) as no_folder:
        vault.backup(tmp_path / "missing" / "b.sqlite", actor=ENGINEER)
    assert no_folder.value.code == "VAULT_BACKUP_FAILED"
    assert leftovers(tmp_path) == []


def test_a_vault_whose_audit_log_was_altered_is_not_backed_up(vault: Vault, tmp_path: Path) -> None:
    vault.tokenize_many(requests(0, 10), actor=SERVICE)
    with sqlite3.connect(tmp_path / "vault.sqlite") as raw:
        raw.execute("UPDATE vault_audit SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(VaultError) as refused:
        vault.backup(tmp_path / "b.sqlite", actor=ENGINEER)
    assert refused.value.code == "VAULT_AUDIT_TAMPERED"
    assert not (tmp_path / "b.sqlite").exists() and leftovers(tmp_path) == []


def test_a_backup_whose_data_keys_do_not_unwrap_fails_its_check(
    vault: Vault, tmp_path: Path
) -> None:
    """The check opens the copy with the keys: a data key that does not unwrap fails it."""
    vault.tokenize_many(requests(0, 10), actor=SERVICE)
    with sqlite3.connect(tmp_path / "vault.sqlite") as raw:
        raw.execute("UPDATE vault_data_key SET wrapped = zeroblob(60)")
    vault._opening.clear()  # as a new process would: data keys unwrapped from the database
    with pytest.raises(CryptoError) as failed:
        vault.backup(tmp_path / "b.sqlite", actor=ENGINEER)
    assert failed.value.code == "VAULT_DECRYPT_FAILED"
    assert not (tmp_path / "b.sqlite").exists() and leftovers(tmp_path) == []


# --- the vault_maintenance DAG's daily backup -----------------------------------------------


def maintenance(home: Path, day: int, **settings: object) -> dict[str, object]:
    start = datetime(2026, 3, day, 2, tzinfo=UTC)
    context = RunContext(
        "vault_maintenance",
        f"run-{day}",
        start,
        start,
        settings=load_settings(home=home, **settings),
    )
    return vault_maintenance.back_up(context)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    vault = open_vault(load_settings(home=home), initialize=True)
    vault.init(actor=SERVICE)
    vault.tokenize_many(requests(0, 5), actor=SERVICE)
    vault.close()
    return home


def test_the_daily_backup_keeps_the_newest_and_a_retry_keeps_the_days_backup(home: Path) -> None:
    folder = home / "backups"
    for day in range(1, 6):
        result = maintenance(home, day, vault_backup_keep=3)
        assert result["backup"] == str(folder / f"vault-2026-03-0{day}.sqlite")
    (folder / "notes.txt").write_text("kept: not a backup this task names")
    (folder / "vault-latest.sqlite").write_text("kept: not a day")
    retry = maintenance(home, 5, vault_backup_keep=3)
    assert (retry["already"], retry["removed"]) == (True, [])
    assert sorted(p.name for p in folder.iterdir()) == [
        "notes.txt",
        "vault-2026-03-03.sqlite",
        "vault-2026-03-04.sqlite",
        "vault-2026-03-05.sqlite",
        "vault-latest.sqlite",
    ]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_the_daily_backup_goes_where_it_is_told_or_nowhere(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "offsite"
    made = maintenance(home, 1, vault_backup_dir=elsewhere)
    assert made["backup"] == str(elsewhere / "vault-2026-03-01.sqlite")
    assert not (home / "backups").exists()
    off = maintenance(home, 2, vault_backup_keep=0)
    assert off["backup"] is None and "CMOHUB_VAULT_BACKUP_KEEP" in str(off["reason"])
    assert not (home / "backups").exists()


def test_the_daily_backup_warns_when_it_shares_the_vaults_disk(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="cmohub.pipelines.vault_maintenance"):
        default = maintenance(home, 1)
    assert default["same_disk"] is True
    assert "CMOHUB_VAULT_BACKUP_DIR" in caplog.text and "same file system" in caplog.text
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != home.stat().st_dev:
        with tempfile.TemporaryDirectory(dir=shm) as other:  # another file system
            caplog.clear()
            apart = maintenance(home, 2, vault_backup_dir=Path(other))
            assert apart["same_disk"] is False and "same file system" not in caplog.text


def test_the_daily_backup_names_kept_backups_a_deleted_key_makes_unrestorable(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert maintenance(home, 1)["unrestorable"] == {}
    vault = open_vault(load_settings(home=home))
    vault.rotate_kek(actor=SERVICE)
    vault.close()
    assert maintenance(home, 2)["unrestorable"] == {}
    (home / "keys" / "kek.v1.key").unlink()  # "the rotation is done: v1 can go"
    (home / "backups" / "vault-2026-02-28.sqlite").write_bytes(b"damaged")

    with caplog.at_level("WARNING", logger="cmohub.pipelines.vault_maintenance"):
        result = maintenance(home, 3)

    unrestorable = result["unrestorable"]
    assert isinstance(unrestorable, dict)
    assert unrestorable["vault-2026-03-01.sqlite"] == ["kek v1"]
    assert unrestorable["vault-2026-02-28.sqlite"][0].startswith("unreadable")
    assert sorted(unrestorable) == ["vault-2026-02-28.sqlite", "vault-2026-03-01.sqlite"]
    assert "vault-2026-03-01.sqlite cannot be restored" in caplog.text and "kek v1" in caplog.text
    with pytest.raises(ConfigError) as restore:  # what the warning spares someone
        Vault.restore(
            home / "backups" / "vault-2026-03-01.sqlite",
            load_settings(home=home).vault_database_url,
            FileKeyProvider(home / "keys"),
            actor=ENGINEER,
            replace=True,
        )
    assert restore.value.code == "VAULT_KEY_MISSING"
