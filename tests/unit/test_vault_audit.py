"""The audit log: every tampering a privacy officer must be able to detect, is detected."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.vault_support import SERVICE

from cmohub.errors import CryptoError, VaultError
from cmohub.identity import SubjectIdentity
from cmohub.sensitive import Sensitive
from cmohub.vault import (
    AuditStatus,
    Checkpoint,
    KeyPurpose,
    MemoryKeyProvider,
    Roles,
    Vault,
    verify_checkpoint,
)
from cmohub.vault.audit import GENESIS, event_hash, merkle_root


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault(
        f"sqlite:///{tmp_path}/vault.sqlite",
        MemoryKeyProvider.generated(),
        roles=Roles({"alice": ["privacy_officer"]}),
        clock=Clock(),
    )
    v.init(actor=SERVICE)  # event 1 (init) and a checkpoint of size 1
    for i in range(9):  # events 2..10
        v.tokenize(
            SubjectIdentity("urn:oid:1.2.3", Sensitive(f"CANARY-MRN-{i}")), "E", actor=SERVICE
        )
    yield v
    v.close()


def sql(
    tmp_path: Path, statement: str, params: tuple[object, ...] = ()
) -> list[tuple[object, ...]]:
    with sqlite3.connect(tmp_path / "vault.sqlite") as con:
        return con.execute(statement, params).fetchall()


def rechain(tmp_path: Path, start: int) -> None:
    """What an attacker with database access does: recompute every hash from ``start`` on."""
    with sqlite3.connect(tmp_path / "vault.sqlite") as con:
        rows = con.execute(
            "SELECT seq, at, event, actor, role, feed, purpose, ticket, coi, outcome, details "
            "FROM vault_audit ORDER BY seq"
        ).fetchall()
        prev = GENESIS
        for row in rows:
            seq = row[0]
            if seq < start:
                prev = con.execute("SELECT hash FROM vault_audit WHERE seq = ?", (seq,)).fetchone()[
                    0
                ]
                continue
            names = ("seq", "at", "event", "actor", "role", "feed", "purpose", "ticket", "coi",
                     "outcome", "details")  # fmt: skip
            digest = event_hash(**dict(zip(names, row, strict=True)), prev_hash=prev)
            con.execute(
                "UPDATE vault_audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq)
            )
            prev = digest


def rfc9162_root(leaves: list[bytes]) -> bytes:
    """The Merkle tree head exactly as RFC 9162 §2.1.1 defines it (recursively)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc9162_root(leaves[:k]) + rfc9162_root(leaves[k:])).digest()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8, 13, 31, 64, 100])
def test_the_merkle_root_is_the_rfc_9162_tree_head(n: int) -> None:
    leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(n)]
    assert merkle_root(leaves) == rfc9162_root(leaves)


def test_an_untouched_log_verifies(vault: Vault) -> None:
    vault.checkpoint()
    result = vault.verify_audit()
    assert result.intact and result.events == 10 and result.checkpoints == 2
    rows = sql(
        Path(str(vault.engine.url.database)).parent,
        "SELECT seq, at, prev_hash, hash FROM vault_audit ORDER BY seq",
    )
    assert rows[0][2] == GENESIS
    for before, after in itertools.pairwise(rows):
        assert after[2] == before[3]  # each event carries the previous event's hash
        assert after[1].endswith("+00:00")


def test_an_edited_event_is_named(vault: Vault, tmp_path: Path) -> None:
    sql(tmp_path, "UPDATE vault_audit SET actor = 'someone-else' WHERE seq = 4")
    result = vault.verify_audit()
    assert (result.status, result.first_bad_seq) == (AuditStatus.TAMPERED, 4)
    assert "edited" in result.reason


def test_a_deleted_event_is_named(vault: Vault, tmp_path: Path) -> None:
    sql(tmp_path, "DELETE FROM vault_audit WHERE seq = 6")
    result = vault.verify_audit()
    assert (result.status, result.first_bad_seq) == (AuditStatus.TAMPERED, 6)


def test_an_inserted_event_is_found(vault: Vault, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "vault.sqlite") as con:
        con.execute("UPDATE vault_audit SET seq = -seq - 1 WHERE seq >= 5")
        con.execute("UPDATE vault_audit SET seq = -seq WHERE seq < 0")
        prev = con.execute("SELECT hash FROM vault_audit WHERE seq = 4").fetchone()[0]
        fields = {
            "seq": 5, "at": "2026-03-01T00:00:04.500000+00:00", "event": "tokenize",
            "actor": "pipeline:forged", "role": "service", "feed": None, "purpose": None,
            "ticket": None, "coi": None, "outcome": "ok", "details": "{}",
        }  # fmt: skip
        digest = event_hash(**fields, prev_hash=prev)  # type: ignore[arg-type]
        con.execute(
            "INSERT INTO vault_audit VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (*fields.values(), prev, digest),
        )
    result = vault.verify_audit()
    assert result.status is AuditStatus.TAMPERED
    assert result.first_bad_seq == 6  # the forged event 5 links back; the next one cannot


def test_reordered_events_are_found(vault: Vault, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "vault.sqlite") as con:
        con.execute("UPDATE vault_audit SET seq = 100 WHERE seq = 3")
        con.execute("UPDATE vault_audit SET seq = 3 WHERE seq = 7")
        con.execute("UPDATE vault_audit SET seq = 7 WHERE seq = 100")
    result = vault.verify_audit()
    assert (result.status, result.first_bad_seq) == (AuditStatus.TAMPERED, 3)


def test_a_rewritten_and_rechained_log_fails_against_its_checkpoint(
    vault: Vault, tmp_path: Path
) -> None:
    vault.checkpoint()  # covers events 1..10
    sql(tmp_path, "UPDATE vault_audit SET details = '{\"requests\":99}' WHERE seq = 5")
    rechain(tmp_path, 5)
    result = vault.verify_audit()
    assert result.status is AuditStatus.TAMPERED
    assert result.first_bad_seq == 2  # the earlier checkpoint (size 1) still matches
    assert "rewritten" in result.reason
    with pytest.raises(VaultError) as caught:
        vault.checkpoint()  # never sign a log that does not verify
    assert caught.value.code == "VAULT_AUDIT_TAMPERED"


def test_a_log_truncated_behind_its_last_checkpoint_is_found(vault: Vault, tmp_path: Path) -> None:
    vault.checkpoint()
    sql(tmp_path, "DELETE FROM vault_audit WHERE seq > 7")
    result = vault.verify_audit()
    assert (result.status, result.first_bad_seq) == (AuditStatus.TAMPERED, 8)
    assert "truncated" in result.reason


def test_a_forged_checkpoint_is_found(vault: Vault, tmp_path: Path) -> None:
    vault.checkpoint()
    sql(tmp_path, "UPDATE vault_checkpoint SET size = 3 WHERE size = 10")
    result = vault.verify_audit()
    assert result.status is AuditStatus.TAMPERED and "signature" in result.reason


def test_witnesses_outside_the_vault_catch_a_rewrite_that_removed_the_checkpoints(
    vault: Vault, tmp_path: Path
) -> None:
    witness = vault.checkpoint().to_dict()  # e.g. embedded in a published manifest
    sql(tmp_path, "DELETE FROM vault_checkpoint")
    sql(tmp_path, "UPDATE vault_audit SET actor = 'nobody' WHERE seq = 3")
    rechain(tmp_path, 3)
    assert vault.verify_audit().intact  # the vault alone cannot tell...
    result = vault.verify_audit(witnesses=[Checkpoint.from_dict(witness)])
    assert result.status is AuditStatus.TAMPERED  # ...a recipient's copy can


def test_checkpoints_verify_without_the_vault(vault: Vault) -> None:
    checkpoint = vault.checkpoint()
    public = vault.audit_public_key()
    data = checkpoint.to_dict()
    assert data["size"] == 10 and len(data["root"]) == 64 and data["key_version"] == 1
    assert vault.latest_checkpoint() == checkpoint
    assert verify_checkpoint(data, public) and verify_checkpoint(checkpoint, public.hex())
    assert not verify_checkpoint({**data, "size": 11}, public)
    assert not verify_checkpoint({**data, "root": "00" * 32}, public)
    other = Vault.ephemeral()
    assert not verify_checkpoint(data, other.audit_public_key())
    with pytest.raises(CryptoError) as caught:
        Checkpoint.from_dict({"size": "ten"})
    assert caught.value.code == "VAULT_CHECKPOINT_INVALID"


def test_a_missing_audit_key_makes_the_log_unverifiable(vault: Vault) -> None:
    provider = vault.key_provider
    assert isinstance(provider, MemoryKeyProvider)
    provider.forget(KeyPurpose.AUDIT, 1)
    result = Vault(vault.engine, provider).verify_audit()
    assert result.status is AuditStatus.UNVERIFIABLE and "audit key version 1" in result.reason


def test_checkpoints_survive_an_audit_key_rotation(vault: Vault) -> None:
    before = vault.checkpoint()
    vault.rotate_audit_key(actor=SERVICE)
    after = vault.latest_checkpoint()
    assert after is not None and (before.key_version, after.key_version) == (1, 2)
    assert vault.verify_audit().intact


def test_the_report_cannot_smuggle_formulas_or_markup() -> None:
    from datetime import date

    from cmohub.vault import AuditRecord
    from cmohub.vault.report import build_report, render_csv, render_html

    record = AuditRecord(
        seq=7, at="2026-03-01T00:00:00+00:00", event="reveal", actor="alice",
        role="privacy_officer", feed=None, purpose="=HYPERLINK(\"http://x\")",
        ticket="<script>alert(1)</script>", coi="CHA999926AB12C3G", outcome="granted",
        details="{}",
    )  # fmt: skip
    report = build_report([record], since=date(2026, 3, 1))
    assert "'=HYPERLINK" in render_csv(report)
    html = render_html(report)
    assert "<script>" not in html and "&lt;script&gt;" in html
