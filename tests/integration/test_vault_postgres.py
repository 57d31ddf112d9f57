"""The vault on a real PostgreSQL server: one COI per subject under real concurrency.

Each test creates its own database and drops it afterwards. Without PostgreSQL at
127.0.0.1:5432 (user postgres, database test) the tests skip on a laptop and fail in CI.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from tests.conftest import need
from tests.vault_support import OFFICER, SERVICE, SYSTEM

from cmohub.errors import ConfigError, CryptoError, VaultError
from cmohub.identifiers import Coi
from cmohub.identity import CoiStatus, SubjectIdentity, TokenizeRequest
from cmohub.sensitive import Sensitive
from cmohub.vault import (
    AuditStatus,
    EnrollmentAssignment,
    FileKeyProvider,
    MemoryKeyProvider,
    Roles,
    Vault,
)
from cmohub.vault.schema import metadata

pytestmark = pytest.mark.integration

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
CONCURRENCY = Path(__file__).resolve().parents[1] / "unit" / "test_vault_concurrency.py"


def _server_up() -> bool:
    try:
        with psycopg.connect(ADMIN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    need(_server_up(), "PostgreSQL at 127.0.0.1:5432 (user postgres, database test)")
    name = f"cmohub_vault_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def vault(pg_url: str) -> Iterator[Vault]:
    v = Vault(pg_url, MemoryKeyProvider.generated(), roles=Roles({"alice": ["privacy_officer"]}))
    v.init(actor=SERVICE)
    yield v
    v.close()


def ident(value: str) -> SubjectIdentity:
    return SubjectIdentity(system=SYSTEM, value=Sensitive(value))


def concurrency_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vault_concurrency", CONCURRENCY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_migrated_schema_is_the_declared_schema(vault: Vault) -> None:
    with vault.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": "vault_alembic_version"}
        )
        assert compare_metadata(context, metadata) == []


def test_the_vault_works_the_same_on_postgresql(vault: Vault) -> None:
    cois = vault.tokenize_many(
        [TokenizeRequest(ident(f"CANARY-MRN-PG-{i:04d}"), "E") for i in range(500)]
        + [TokenizeRequest(ident("CANARY-MRN-PG-0001"), "E")],
        actor=SERVICE,
    )
    assert len(set(cois)) == 500 and cois[-1] == cois[1]
    assert vault.tokenize(ident("CANARY-MRN-PG-0001"), "E", actor=SERVICE) == cois[1]
    sponsor = str(Coi("A9990", "26", "QW3RT7"))
    enrolled = vault.enroll_many(
        [EnrollmentAssignment(ident("CANARY-MRN-PG-ENR"), "ENR-1", sponsor)], actor=SERVICE
    )
    assert enrolled.enrolled == 1
    with pytest.raises(VaultError, match="VAULT_ENROLL_CONFLICT"):
        vault.enroll_many(
            [EnrollmentAssignment(ident("CANARY-MRN-PG-0002"), "E", sponsor)], actor=SERVICE
        )
    merged = vault.merge(
        ident("CANARY-MRN-PG-0003"), ident("CANARY-MRN-PG-ENR"), actor=SERVICE, reason="A40"
    )
    assert [str(c) for c in merged.moved] == [sponsor]
    assert str(vault.tokenize(ident("CANARY-MRN-PG-0003"), "ENR-1", actor=SERVICE)) == sponsor
    revealed = vault.reveal(str(cois[7]), actor=OFFICER, purpose="AE", ticket="PV-9")
    assert revealed.identity.value.reveal() == "CANARY-MRN-PG-0007"
    vault.withdraw(str(cois[8]), actor=OFFICER, reason="consent withdrawn")
    assert vault.verify_many([str(cois[7]), str(cois[8])], actor=SERVICE) == [
        CoiStatus.KNOWN,
        CoiStatus.WITHDRAWN,
    ]
    with vault.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE vault_coi SET sealed = sealed || '\\x00'::bytea WHERE coi = %s", (str(cois[9]),)
        )
    with pytest.raises(CryptoError, match="VAULT_DECRYPT_FAILED"):
        vault.reveal(str(cois[9]), actor=OFFICER, purpose="AE", ticket="PV-9")
    assert vault.verify_audit().intact
    with vault.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE vault_audit SET ticket = 'PV-0' WHERE event = 'reveal'")
    result = vault.verify_audit()
    assert result.status is AuditStatus.TAMPERED and result.first_bad_seq is not None


def test_rotations_on_postgresql_change_no_coi(vault: Vault) -> None:
    requests = [TokenizeRequest(ident(f"CANARY-MRN-ROT-{i:05d}"), f"E{i % 2}") for i in range(3000)]
    cois = vault.tokenize_many(requests, actor=SERVICE)
    vault.merge(
        ident("CANARY-MRN-ROT-99999"), ident("CANARY-MRN-ROT-00000"), actor=SERVICE, reason="A40"
    )
    for _ in range(2):
        vault.rotate_index_key(actor=SERVICE)
        vault.rotate_kek(actor=SERVICE)
    assert vault.tokenize_many(requests, actor=SERVICE) == cois
    assert vault.lookup(ident("CANARY-MRN-ROT-99999"), "E0", actor=SERVICE) == cois[0]
    revealed = vault.reveal_many([str(c) for c in cois], actor=OFFICER, purpose="check", ticket="T")
    assert [r.identity.value.reveal() for r in revealed[:3]] == [
        "CANARY-MRN-ROT-00000",
        "CANARY-MRN-ROT-00001",
        "CANARY-MRN-ROT-00002",
    ]
    status = vault.status()
    assert (status.index_version, status.kek_version) == (3, 3)
    assert status.rows_by_index_version == {3: 3000}
    assert set(status.data_keys_by_kek_version) == {3}


def test_concurrent_processes_get_one_coi_per_subject_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    conc = concurrency_module()
    keys = tmp_path / "keys"
    with Vault(pg_url, FileKeyProvider(keys)) as vault:
        vault.init(actor=SERVICE)
        results = conc.run_workers(pg_url, keys, tmp_path / "go", workers=4, count=3000, batch=150)
        conc.check_one_coi_per_subject(vault, results, 3000)
        with vault.engine.connect() as connection:
            seqs = [
                r[0] for r in connection.exec_driver_sql("SELECT seq FROM vault_audit ORDER BY seq")
            ]
        assert seqs == list(range(1, len(seqs) + 1))  # one chain, no gaps, despite 4 writers


def test_concurrent_large_batches_fall_back_from_copy_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    # Batches of 1,000 are copied straight into vault_coi; when another process holds the same
    # subject (committed or not), the copy fails as a whole, its savepoint is rolled back and
    # the batch goes through INSERT ... ON CONFLICT DO NOTHING instead.
    conc = concurrency_module()
    keys = tmp_path / "keys"
    with Vault(pg_url, FileKeyProvider(keys)) as vault:
        vault.init(actor=SERVICE)
        results = conc.run_workers(pg_url, keys, tmp_path / "go", workers=4, count=4000, batch=1000)
        conc.check_one_coi_per_subject(vault, results, 4000)


class _RepeatOnce:
    """A random source whose first two draws are equal (to force a COI collision), then counts."""

    def __init__(self) -> None:
        self.numbers = [123456789, 123456789]
        self.next = 10**6

    def randrange(self, stop: int, /) -> int:
        if self.numbers:
            return self.numbers.pop(0) % stop
        self.next += 7919
        return self.next % stop


def test_a_random_collision_in_a_copied_batch_is_retried_on_postgresql(pg_url: str) -> None:
    with Vault(pg_url, MemoryKeyProvider.generated(), rng=_RepeatOnce()) as vault:
        vault.init(actor=SERVICE)
        first = vault.tokenize(ident("CANARY-MRN-PG-FIRST"), "E", actor=SERVICE)
        # The batch's first random COI is `first`'s: found taken before the copy, drawn again.
        requests = [TokenizeRequest(ident(f"CANARY-MRN-PG-C{i:04d}"), "E") for i in range(800)]
        result = vault.tokenize_many_detailed(requests, actor=SERVICE)
        assert len(set(result.cois)) == 800 and first not in result.cois
        assert all(result.new)
        assert vault.tokenize_many(requests, actor=SERVICE) == result.cois
        assert vault.status().cois_active == 801
        assert vault.verify_audit().intact


def test_a_postgresql_vault_is_backed_up_with_postgresqls_tools(
    vault: Vault, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as refused:
        vault.backup(tmp_path / "b.sqlite", actor=SERVICE)
    assert refused.value.code == "VAULT_BACKUP_UNSUPPORTED" and "pg_dump" in refused.value.message
    assert list(tmp_path.iterdir()) == []
