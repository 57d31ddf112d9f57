"""``Vault.restore`` / ``cmohub vault restore``: a vault back from its backup, checked first.

What a data engineer relies on when the vault file is lost or damaged: the restored vault
answers every lookup and reveal the backup can; the backup file is never changed; the vault
that was there is kept, never deleted; the COIs the backup lacks are named (their subjects'
link is gone); a backup that does not verify, is of another vault or needs a key that is
gone changes nothing; and the restored audit log says who restored what.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import stat
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from tests.vault_support import ENGINEER, OFFICER, ROLES, SERVICE, canary_requests

from cmohub.errors import ConfigError, StoreUnavailable, TransientError, VaultError
from cmohub.identity import TokenizeRequest
from cmohub.vault import AuditStatus, MappingKeyProvider, MemoryKeyProvider, Vault, store
from cmohub.vault import backup as backup_files
from cmohub.vault.keys import KeyPurpose


def requests(start: int, count: int) -> list[TokenizeRequest]:
    return canary_requests("RST", start, count)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def snapshot(folder: Path) -> dict[str, str]:
    """Each file's SHA-256 by name: what "changes nothing" compares."""
    return {name: sha256(folder / name) for name in listing(folder)}


@pytest.fixture
def keys() -> MemoryKeyProvider:
    return MemoryKeyProvider.generated()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def url(home: Path) -> str:
    return f"sqlite:///{home / 'vault.sqlite'}"


def backed_up(url: str, keys: MemoryKeyProvider, backup: Path, *, after: int = 0) -> list[str]:
    """A vault with 200 subjects, one withdrawn, backed up; then ``after`` more subjects.
    Returns the COIs allocated after the backup."""
    with Vault(url, keys, roles=ROLES) as vault:
        vault.init(actor=SERVICE)
        cois = vault.tokenize_many(requests(0, 200), actor=SERVICE)
        vault.withdraw(str(cois[0]), actor=OFFICER, reason="consent withdrawn, form CW-2")
        vault.backup(backup, actor=ENGINEER)
        later = vault.tokenize_many(requests(200, after), actor=SERVICE) if after else []
    return sorted(str(c) for c in later)


def test_a_lost_vault_comes_back_from_its_backup_and_answers_as_before(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "vault-2026-11-26.sqlite"
    backed_up(url, keys, backup)
    with Vault(url, keys) as vault:
        before = vault.lookup_many(requests(0, 200), actor=SERVICE)
    before_sha = sha256(backup)
    for name in listing(home):
        (home / name).unlink()  # the disk is gone
    (home / "vault.sqlite").touch()  # and a command opened the missing vault meanwhile

    result = Vault.restore(backup, url, keys, actor=ENGINEER)

    assert (result.replaced, result.lost_cois) == (None, None)
    assert (
        result.checked.cois_active,
        result.checked.cois_withdrawn,
        result.checked.data_keys,
    ) == (199, 1, 1)
    assert result.backup_sha256 == before_sha == sha256(backup)  # the backup is untouched
    assert listing(home) == ["vault.sqlite"]
    assert stat.S_IMODE((home / "vault.sqlite").stat().st_mode) == 0o600
    with Vault.open(url, keys, roles=ROLES) as vault:
        assert vault.lookup_many(requests(0, 200), actor=SERVICE) == before
        assert before[0] is None and before[1] is not None
        revealed = vault.reveal(str(before[5]), actor=OFFICER, purpose="restore", ticket="T-9")
        assert revealed.identity.value.reveal() == "CANARY-MRN-RST-00005"
        verification = vault.verify_audit(witnesses=[result.checkpoint])
        assert verification.status is AuditStatus.INTACT
        status = vault.status()
        records = vault.audit_records(since=date(2000, 1, 1), actor=OFFICER)
    assert status.last_backup is not None and status.last_backup[1] == backup.name
    assert status.last_restore is not None and status.last_restore[1] == backup.name
    (restore,) = [r for r in records if r.event == "restore"]
    assert (restore.actor, restore.role, restore.purpose) == ("bob", "data_engineer",
                                                              "restore from backup")  # fmt: skip
    assert backup.name in restore.details and before_sha in restore.details
    assert restore.seq == result.checkpoint.size == result.checked.audit_events + 1


def test_replacing_keeps_the_old_vault_and_names_the_cois_the_backup_lacks(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    later = backed_up(url, keys, backup, after=7)
    with Vault(url, keys) as vault:
        witness = vault.checkpoint()  # as the latest published manifest carries it
        events_before = vault.status().audit_events

    with pytest.raises(VaultError) as refused:
        Vault.restore(backup, url, keys, actor=ENGINEER)
    assert refused.value.code == "VAULT_RESTORE_EXISTS" and "--replace" in str(refused.value)

    result = Vault.restore(backup, url, keys, actor=ENGINEER, replace=True, witnesses=[witness])

    assert result.lost_cois == tuple((coi, "active") for coi in later)
    # The tokenize that allocated them stays in the replaced file's log only.
    assert (result.replaced_events_after, result.replaced_diverges) == ({"tokenize": 1}, False)
    assert result.witness_lacks == events_before - result.checked.audit_events == 1  # the tokenize
    assert result.replaced is not None
    aside = Path(result.replaced)
    assert aside.parent == home and aside.name.startswith("vault.sqlite.replaced-")
    assert listing(home) == sorted(["vault.sqlite", aside.name])  # one file each, no journals
    with Vault.open(f"sqlite:///{aside}", keys) as old:  # the old vault is intact, as it was
        assert old.verify_audit().status is AuditStatus.INTACT
        assert old.status().audit_events == events_before
    with Vault.open(url, keys) as vault:
        assert vault.status().cois_active == 199
        again = vault.tokenize_many_detailed(requests(200, 7), actor=SERVICE)
        # What README warns about: those subjects are new to the restored vault.
        assert all(again.new) and not {str(c) for c in again.cois} & set(later)


def test_a_backup_that_does_not_verify_changes_nothing(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    backed_up(url, keys, backup)
    with sqlite3.connect(backup) as raw:  # someone edits an event in the backup
        raw.execute("UPDATE vault_audit SET actor = 'mallory' WHERE seq = 2")
    raw.close()
    before = snapshot(home)

    with pytest.raises(VaultError) as failed:
        Vault.restore(backup, url, keys, actor=ENGINEER, replace=True)

    assert failed.value.code == "VAULT_RESTORE_FAILED"
    assert "event 2" in str(failed.value)
    assert snapshot(home) == before


def test_a_backup_of_another_vault_or_not_a_vault_is_refused(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-backup.sqlite"
    backed_up(f"sqlite:///{tmp_path / 'other.sqlite'}", keys, other)
    backed_up(url, keys, tmp_path / "ours.sqlite")
    before = snapshot(home)

    with pytest.raises(VaultError) as mismatch:
        Vault.restore(other, url, keys, actor=ENGINEER, replace=True)
    assert mismatch.value.code == "VAULT_RESTORE_MISMATCH"

    text = tmp_path / "notes.sqlite"
    text.write_text("not a database")
    with pytest.raises(VaultError) as not_sqlite:
        Vault.restore(text, url, keys, actor=ENGINEER, replace=True)
    assert not_sqlite.value.code == "VAULT_RESTORE_FAILED" and str(text) in str(not_sqlite.value)

    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(VaultError) as not_vault:
        Vault.restore(empty, url, keys, actor=ENGINEER, replace=True)
    assert not_vault.value.code == "VAULT_RESTORE_FAILED"

    with pytest.raises(VaultError) as missing:
        Vault.restore(tmp_path / "nowhere.sqlite", url, keys, actor=ENGINEER, replace=True)
    assert missing.value.code == "VAULT_RESTORE_FAILED"

    assert snapshot(home) == before


def test_a_backup_needing_a_key_that_is_gone_changes_nothing(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    backed_up(url, keys, backup)
    with Vault(url, keys) as vault:
        vault.rotate_kek(actor=ENGINEER)
    # The KEK v1 the backup's data key is wrapped with was destroyed after the rotation.
    without_v1 = MappingKeyProvider(
        {
            f"CMOHUB_VAULT_KEY_{purpose.value.upper()}_V{version}": base64.b64encode(
                keys.load(purpose, version)
            ).decode()
            for purpose in KeyPurpose
            for version in keys.versions(purpose)
            if (purpose, version) != (KeyPurpose.KEK, 1)
        }
    )
    before = snapshot(home)

    with pytest.raises(ConfigError) as failed:
        Vault.restore(backup, url, without_v1, actor=ENGINEER, replace=True)

    assert failed.value.code == "VAULT_KEY_MISSING"
    assert snapshot(home) == before


def test_a_vault_open_in_another_process_is_not_replaced(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    backed_up(url, keys, backup)
    pipeline = sqlite3.connect(home / "vault.sqlite")  # a DAG still has it open
    try:
        pipeline.execute("SELECT COUNT(*) FROM vault_coi").fetchone()
        with pytest.raises(VaultError) as busy:
            Vault.restore(backup, url, keys, actor=ENGINEER, replace=True)
    finally:
        pipeline.close()
    assert busy.value.code == "VAULT_RESTORE_IN_USE" and "stop" in str(busy.value)
    assert [n for n in listing(home) if "replaced" in n or "partial" in n] == []


def test_a_postgresql_vault_is_restored_with_its_own_tools(
    keys: MemoryKeyProvider, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    backed_up(f"sqlite:///{tmp_path / 'v.sqlite'}", keys, backup)
    for url in ("postgresql://postgres@127.0.0.1:5432/test", "sqlite://"):
        with pytest.raises(ConfigError) as unsupported:
            Vault.restore(backup, url, keys, actor=ENGINEER)
        assert unsupported.value.code == "VAULT_RESTORE_UNSUPPORTED"


def test_a_damaged_vault_is_moved_aside_though_what_it_lost_is_unknown(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    backed_up(url, keys, backup)
    vault_file = home / "vault.sqlite"
    damaged = b"\x00garbage after a disk fault\x00" * 100
    vault_file.write_bytes(damaged)

    result = Vault.restore(backup, url, keys, actor=ENGINEER, replace=True)

    assert result.lost_cois is None and result.replaced_unreadable == "DatabaseError"
    assert result.replaced is not None and Path(result.replaced).read_bytes() == damaged
    with Vault.open(url, keys) as vault:
        assert vault.status().cois_active == 199
        assert vault.verify_audit().status is AuditStatus.INTACT


def test_on_a_new_machine_the_keys_come_first(
    keys: MemoryKeyProvider, url: str, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    backed_up(url, keys, backup)
    new_home = tmp_path / "new-machine" / "home"
    new_url = f"sqlite:///{new_home / 'vault.sqlite'}"

    with pytest.raises(ConfigError) as no_keys:
        Vault.restore(backup, new_url, MemoryKeyProvider(), actor=ENGINEER)
    assert no_keys.value.code == "VAULT_KEY_MISSING" and "key files" in str(no_keys.value)
    assert not new_home.exists()  # nothing left behind

    result = Vault.restore(backup, new_url, keys, actor=ENGINEER)

    assert stat.S_IMODE(new_home.stat().st_mode) == 0o700
    assert result.path == str(new_home / "vault.sqlite") and result.checked.cois_active == 199


def test_a_witness_the_backup_covers_must_match_it(
    keys: MemoryKeyProvider, url: str, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    with Vault(url, keys) as vault:
        vault.init(actor=SERVICE)
        vault.tokenize_many(requests(0, 10), actor=SERVICE)
        published = vault.checkpoint()
        vault.backup(backup, actor=ENGINEER)
    foreign = Vault.ephemeral().checkpoint()

    with pytest.raises(VaultError) as other:
        Vault.restore(backup, url, keys, actor=ENGINEER, replace=True, witnesses=[foreign])
    assert other.value.code == "VAULT_RESTORE_MISMATCH"

    result = Vault.restore(backup, url, keys, actor=ENGINEER, replace=True, witnesses=[published])
    assert result.witness_lacks is None and result.lost_cois == ()


def test_a_replaced_vault_whose_log_was_rewritten_is_called_out(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    backed_up(url, keys, backup, after=2)
    with sqlite3.connect(home / "vault.sqlite") as raw:  # the backup's last event, re-hashed
        last = raw.execute("SELECT MAX(seq) FROM vault_audit WHERE event = 'export'").fetchone()
        raw.execute("UPDATE vault_audit SET hash = zeroblob(32) WHERE seq = ?", last)
    raw.close()

    result = Vault.restore(backup, url, keys, actor=ENGINEER, replace=True)

    assert (result.replaced_events_after, result.replaced_diverges) == (None, True)
    with Vault.open(url, keys) as vault:
        records = vault.audit_records(since=date(2000, 1, 1), actor=OFFICER)
    (restore,) = [r for r in records if r.event == "restore"]
    assert '"replaced_events_after":"diverges"' in restore.details


def test_a_pipeline_starting_during_a_restore_waits_and_then_uses_the_restored_vault(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the in-use check and the restored file taking the vault's name, a DAG task that
    # opened the vault would write into the file being moved aside: COIs the restored vault
    # never learns. Its connection waits instead, then opens the restored vault.
    backup = tmp_path / "backup.sqlite"
    later = backed_up(url, keys, backup, after=3)
    with sqlite3.connect(home / "vault.sqlite") as raw:
        events_before = raw.execute("SELECT COUNT(*) FROM vault_audit").fetchone()[0]
    raw.close()
    connecting = threading.Event()
    share = store.share_vault_file

    def share_noting(path: str, *, wait_seconds: float) -> int:
        connecting.set()
        return share(path, wait_seconds=wait_seconds)

    monkeypatch.setattr(store, "share_vault_file", share_noting)
    found: list[object] = []

    def pipeline() -> None:
        with Vault(url, keys) as vault:
            found.extend(vault.lookup_many(requests(200, 3), actor=SERVICE))

    task = threading.Thread(target=pipeline)
    take_over = backup_files.take_over

    def take_over_while_a_pipeline_starts(target: Path, restored: Path) -> object:
        replaced = take_over(target, restored)
        task.start()
        assert connecting.wait(30)
        time.sleep(0.2)  # it is now waiting for the file (it cannot have opened it)
        return replaced

    monkeypatch.setattr(backup_files, "take_over", take_over_while_a_pipeline_starts)

    result = Vault.restore(backup, url, keys, actor=ENGINEER, replace=True)
    task.join(60)

    assert found == [None, None, None]  # the restored vault: those COIs came after the backup
    assert result.lost_cois is not None
    assert sorted(coi for coi, _ in result.lost_cois) == later
    assert result.replaced is not None
    with sqlite3.connect(result.replaced) as aside:  # the vault moved aside got nothing new
        assert aside.execute("SELECT COUNT(*) FROM vault_audit").fetchone()[0] == events_before
    aside.close()
    with Vault(url, keys) as vault:
        events = [r.event for r in vault.audit_records(since=date(2000, 1, 1), actor=OFFICER)]
    assert events[-2:] == ["restore", "lookup"]  # the pipeline's lookup came after the restore


def test_a_connection_gives_up_on_a_restore_that_does_not_end_with_a_transient_error(
    keys: MemoryKeyProvider, url: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backed_up(url, keys, tmp_path / "backup.sqlite")
    monkeypatch.setattr(store, "RESTORE_WAIT_S", 0.3)
    with Vault(url, keys) as vault:
        vault.status()  # an open connection: a restore cannot own the file
        with pytest.raises(VaultError) as busy, store.own_vault_file(home / "vault.sqlite"):
            pass
        assert busy.value.code == "VAULT_RESTORE_IN_USE"
    with (
        store.own_vault_file(home / "vault.sqlite"),
        Vault(url, keys) as vault,
        pytest.raises(StoreUnavailable) as waiting,
    ):
        vault.status()
    assert waiting.value.code == "VAULT_RESTORING"
    assert isinstance(waiting.value, TransientError)  # Airflow retries the task
    with Vault(url, keys) as vault:
        assert vault.status().cois_active == 199  # once the restore has ended
