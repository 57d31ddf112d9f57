"""``Vault.backup`` / ``cmohub vault backup``: a consistent, checked copy of an SQLite vault.

What a data engineer relies on: the copy opens with the same keys and answers every lookup
and reveal as the vault did; it is safe to take while a pipeline writes; it never replaces a
file; a failed backup leaves nothing behind; and the audit log says who took it.
"""

from __future__ import annotations

import sqlite3
import stat
import threading
from datetime import date
from pathlib import Path

import pytest

from cmohub.errors import CryptoError, VaultError
from cmohub.identity import Actor, SubjectIdentity, TokenizeRequest
from cmohub.sensitive import Sensitive
from cmohub.vault import AuditStatus, MemoryKeyProvider, Roles, Vault

SYSTEM = "urn:cmohub:sandbox:mrn:A9990"
SERVICE = Actor("pipeline:clinical_sync", "service", feed="fhir_clinical")
ENGINEER = Actor("bob", "data_engineer")
OFFICER = Actor("alice", "privacy_officer")
ROLES = Roles({"alice": ["privacy_officer"]})


def requests(start: int, count: int) -> list[TokenizeRequest]:
    return [
        TokenizeRequest(
            SubjectIdentity(system=SYSTEM, value=Sensitive(f"CANARY-MRN-BKP-{i:05d}")), "E1"
        )
        for i in range(start, start + count)
    ]


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
    assert (result.cois_active, result.cois_withdrawn, result.data_keys) == (299, 1, 1)
    assert result.key_versions == {"index": 2, "kek": 1, "audit": 1}
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
    assert result.checkpoint.size == result.audit_events == export.seq  # it is the last one


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
            assert status.cois_active == result.cois_active
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
