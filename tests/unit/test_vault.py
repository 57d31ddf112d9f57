"""The vault on SQLite: allocation, lookup, enrollment, merges, reveal, withdrawal, faults."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from tests.vault_support import ENGINEER, OFFICER, SERVICE, SYSTEM

from cmohub.errors import (
    AccessDenied,
    ConfigError,
    CryptoError,
    IdentifierError,
    StoreUnavailable,
    VaultError,
    is_retryable,
)
from cmohub.identifiers import Coi, parse_coi
from cmohub.identity import (
    Actor,
    CoiStatus,
    Demographics,
    IdentityPort,
    SubjectIdentity,
    TokenizeRequest,
)
from cmohub.sensitive import Sensitive
from cmohub.vault import EnrollmentAssignment, KeyPurpose, MemoryKeyProvider, Roles, Vault

OTHER_SYSTEM = "urn:cmohub:sandbox:mrn:A9991"
ROLES = Roles({"alice": ["privacy_officer"], "bob": ["data_engineer"]})


def ident(value: str, system: str = SYSTEM, **demographics: str) -> SubjectIdentity:
    return SubjectIdentity(
        system=system,
        value=Sensitive(value),
        demographics=Demographics(**{k: Sensitive(v) for k, v in demographics.items()}),
    )


class Clock:
    """A deterministic clock: 2026-03-01 UTC, one second later at every call."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class ScriptedRandom:
    """A random source that replays numbers (to force COI collisions), then counts up."""

    def __init__(self, numbers: list[int]) -> None:
        self.numbers = list(numbers)
        self.next = 10**6

    def randrange(self, stop: int, /) -> int:
        if self.numbers:
            return self.numbers.pop(0) % stop
        self.next += 7919
        return self.next % stop


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault(
        f"sqlite:///{tmp_path}/vault.sqlite",
        MemoryKeyProvider.generated(),
        roles=ROLES,
        clock=Clock(),
        rng=random.Random(7),
    )
    v.init(actor=SERVICE)
    yield v
    v.close()


def db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "vault.sqlite")


def audit_events(vault: Vault, kind: str | None = None) -> list[dict[str, object]]:
    records = vault.audit_records(date(2000, 1, 1), actor=OFFICER)
    return [
        {**asdict(r), "details": json.loads(r.details)}
        for r in records
        if kind is None or r.event == kind
    ]


# --- allocation and lookup -------------------------------------------------------------------


def test_one_subject_and_event_get_one_coi_across_calls_and_within_a_batch(vault: Vault) -> None:
    first = vault.tokenize(ident("CANARY-MRN-0001"), "ENR-1", actor=SERVICE)
    again = vault.tokenize(ident("CANARY-MRN-0001"), "ENR-1", actor=SERVICE)
    batch = vault.tokenize_many(
        [TokenizeRequest(ident("CANARY-MRN-0002"), "ENR-2")] * 3
        + [TokenizeRequest(ident("CANARY-MRN-0001"), "ENR-1")],
        actor=SERVICE,
    )
    assert first == again == batch[3]
    assert batch[0] == batch[1] == batch[2] != first
    assert vault.status().cois_active == 2


def test_a_batch_mixing_systems_gives_each_identity_its_own_coi(vault: Vault) -> None:
    # The batch loop looks a policy up when the system changes: A, B, A, B must not share one.
    other = "urn:cmohub:sandbox:mrn:A9991"
    mixed = [
        TokenizeRequest(ident("CANARY-MRN-0003", system), "ENR-3")
        for system in (SYSTEM, other, SYSTEM, other)
    ]
    cois = vault.tokenize_many(mixed, actor=SERVICE)
    assert cois[0] == cois[2] != cois[1] == cois[3]
    assert vault.tokenize(ident("CANARY-MRN-0003", other), "ENR-3", actor=SERVICE) == cois[1]
    assert vault.tokenize(ident("CANARY-MRN-0003"), "ENR-3", actor=SERVICE) == cois[0]


def test_cois_are_random_valid_isbt128_for_the_configured_facility(tmp_path: Path) -> None:
    with Vault(
        f"sqlite:///{tmp_path}/v.sqlite", MemoryKeyProvider.generated(), fin="A9993", clock=Clock()
    ) as v:
        v.init(actor=SERVICE)
        cois = v.tokenize_many(
            [TokenizeRequest(ident(f"CANARY-MRN-{i:04d}"), "E1") for i in range(200)],
            actor=SERVICE,
        )
    assert len(set(cois)) == 200
    for coi in cois:
        assert isinstance(coi, Coi)
        assert parse_coi(str(coi)) == coi  # the check character is right
        assert (coi.fin, coi.year) == ("A9993", "26")
    # Not derived from the identifier: neighbours in identifier space are not in COI space.
    assert sorted(cois) != cois


class RepeatingWords:
    """A random source whose 64-bit words repeat and sometimes exceed the uniform range."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def randrange(self, stop: int, /) -> int:
        words = [self.random.choice([1, 2, 3, 2**64 - 1, self.random.getrandbits(64)])]
        words += [self.random.getrandbits(64) for _ in range(15)]
        return sum(w << (64 * i) for i, w in enumerate(words)) % stop


@pytest.mark.parametrize("count", [1024, 5000])
def test_large_batches_draw_the_same_cois_as_small_ones(count: int) -> None:
    # Large batches compute their COIs with numpy (when it is loaded); from the same random
    # stream they must be exactly the ones the word-by-word path gives: distinct, valid, in
    # the same order.
    from cmohub.vault.core import _draw_cois_numpy, _draw_cois_python

    for rng_of in (random.Random, RepeatingWords):
        for seed in range(3):
            fast = _draw_cois_numpy(rng_of(seed), "CHA999326", count)
            assert fast == _draw_cois_python(rng_of(seed), "CHA999326", count)
            assert len(set(fast)) == count
            assert all(str(parse_coi(c)) == c for c in fast[:: count // 100])
    with pytest.raises(VaultError) as caught:
        _draw_cois_numpy(ScriptedRandom([42] * 10_000), "CHA999326", count)
    assert caught.value.code == "VAULT_ALLOCATION_EXHAUSTED"


def test_different_events_and_subjects_get_different_cois(vault: Vault) -> None:
    a1 = vault.tokenize(ident("CANARY-MRN-0001"), "ENR-1", actor=SERVICE)
    a2 = vault.tokenize(ident("CANARY-MRN-0001"), "ENR-2", actor=SERVICE)
    b1 = vault.tokenize(ident("CANARY-MRN-0001", OTHER_SYSTEM), "ENR-1", actor=SERVICE)
    assert len({a1, a2, b1}) == 3


def test_spellings_of_one_identifier_share_a_coi(vault: Vault) -> None:
    coi = vault.tokenize(ident("CANARY-MRN-0007"), "ENR-7", actor=SERVICE)
    same = [
        vault.tokenize(ident("  CANARY-MRN-0007\t"), " ENR-7 ", actor=SERVICE),
        vault.tokenize(ident("ＣＡＮＡＲＹ-ＭＲＮ-０００７"), "ENR-7", actor=SERVICE),
        vault.tokenize(
            ident("CANARY-MRN-0007", "URN:CMOHUB:sandbox:mrn:A9990"), "ENR-7", actor=SERVICE
        ),
    ]
    assert same == [coi] * 3
    assert vault.tokenize(ident("canary-mrn-0007"), "ENR-7", actor=SERVICE) != coi


def test_lookup_finds_but_never_allocates(vault: Vault) -> None:
    assert vault.lookup(ident("CANARY-MRN-0003"), "E", actor=SERVICE) is None
    coi = vault.tokenize(ident("CANARY-MRN-0003"), "E", actor=SERVICE)
    assert vault.lookup(ident("CANARY-MRN-0003"), "E", actor=SERVICE) == coi
    assert vault.status().cois_active == 1
    assert [e["details"] for e in audit_events(vault, "lookup")] == [
        {"requests": 1, "found": 0},
        {"requests": 1, "found": 1},
    ]


def test_verify_says_known_unknown_withdrawn_and_rejects_bad_check_characters(vault: Vault) -> None:
    known = vault.tokenize(ident("CANARY-MRN-0004"), "E", actor=SERVICE)
    gone = vault.tokenize(ident("CANARY-MRN-0005"), "E", actor=SERVICE)
    vault.withdraw(str(gone), actor=OFFICER, reason="consent withdrawn (form CW-1)")
    unknown = Coi("A9999", "26", "ZZZZZZ")
    port: IdentityPort = vault
    assert port.verify_many([str(known), str(unknown), str(gone)], actor=SERVICE) == [
        CoiStatus.KNOWN,
        CoiStatus.UNKNOWN,
        CoiStatus.WITHDRAWN,
    ]
    wrong = known.body + ("A" if known.check != "A" else "B")
    with pytest.raises(IdentifierError) as caught:
        vault.verify_many([str(known), wrong], actor=SERVICE)
    assert (caught.value.code, caught.value.where) == ("ID_CHECK_CHARACTER", "cois[1]")
    verify = audit_events(vault, "verify")[0]["details"]
    assert verify == {"requests": 3, "known": 1, "unknown": 1, "withdrawn": 1}


def test_bad_identifiers_are_refused_with_a_code_and_position_but_no_value(vault: Vault) -> None:
    cases = [
        (ident("CANARY-MRN-0009", "https://hospital.example/mrn"), "E", "VAULT_UNKNOWN_SYSTEM"),
        (ident("CANARY-MRN-0009", "ftp://x.example/mrn"), "E", "VAULT_SYSTEM_INVALID"),
        (ident("CANARY-MRN-\x000009"), "E", "VAULT_IDENTIFIER_INVALID"),
        (ident("   "), "E", "VAULT_IDENTIFIER_INVALID"),
        (ident("CANARY-MRN-0009"), "\x07", "VAULT_EVENT_INVALID"),
    ]
    for identity, event, code in cases:
        good = TokenizeRequest(ident("CANARY-MRN-0010"), "E")
        with pytest.raises(VaultError) as caught:
            vault.tokenize_many([good, TokenizeRequest(identity, event)], actor=SERVICE)
        assert caught.value.code == code
        assert caught.value.where is not None and caught.value.where.startswith("requests[1]")
        assert "CANARY" not in str(caught.value)
    assert vault.status().cois_active == 0  # nothing of a refused batch is kept


def test_each_row_records_what_created_it_and_keeps_no_plaintext(
    vault: Vault, tmp_path: Path
) -> None:
    coi = vault.tokenize(ident("CANARY-MRN-0011"), "ENR-11", actor=SERVICE)
    with db(tmp_path) as con:
        row = con.execute(
            "SELECT subject, event, index_version, data_key_id, sealed, status, origin, "
            "created_at, created_by, created_role, created_feed FROM vault_coi WHERE coi = ?",
            (str(coi),),
        ).fetchone()
        kek_version = con.execute(
            "SELECT kek_version FROM vault_data_key WHERE id = ?", (row[3],)
        ).fetchone()[0]
    subject, event, index_version, _key, sealed, status, origin, at, by, role, feed = row
    assert len(subject) == 32 and len(event) == 32 and index_version == 1 and kek_version == 1
    assert (status, origin, by, role, feed) == (
        "active",
        "tokenize",
        SERVICE.name,
        "service",
        "fhir_clinical",
    )
    assert at.endswith("+00:00") and at.startswith("2026-03-01T08:00")
    assert b"CANARY" not in sealed
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("vault.sqlite*"))
    assert b"CANARY-MRN-0011" not in raw and b"ENR-11" not in raw


def test_a_random_collision_is_retried_with_a_new_coi(tmp_path: Path) -> None:
    rng = ScriptedRandom([123456789, 123456789])  # the second subject first draws the same COI
    with Vault(f"sqlite:///{tmp_path}/v.sqlite", MemoryKeyProvider.generated(), rng=rng) as v:
        v.init(actor=SERVICE)
        a = v.tokenize(ident("CANARY-MRN-A"), "E", actor=SERVICE)
        b = v.tokenize(ident("CANARY-MRN-B"), "E", actor=SERVICE)
        assert a != b
        assert v.tokenize(ident("CANARY-MRN-B"), "E", actor=SERVICE) == b


def test_a_random_collision_inside_a_batch_is_retried_with_a_new_coi(tmp_path: Path) -> None:
    rng = ScriptedRandom([123456789, 123456789])  # the batch's first COI is the earlier one's
    with Vault(f"sqlite:///{tmp_path}/v.sqlite", MemoryKeyProvider.generated(), rng=rng) as v:
        v.init(actor=SERVICE)
        a = v.tokenize(ident("CANARY-MRN-A"), "E", actor=SERVICE)
        requests = [TokenizeRequest(ident(f"CANARY-MRN-B{i:03d}"), "E") for i in range(300)]
        result = v.tokenize_many_detailed(requests, actor=SERVICE)
        assert a not in result.cois and len(set(result.cois)) == 300 and all(result.new)
        assert v.tokenize_many(requests, actor=SERVICE) == result.cois
        assert v.status().cois_active == 301


def test_a_stuck_random_source_gives_a_clear_error(tmp_path: Path) -> None:
    rng = ScriptedRandom([42] * 1000)
    with Vault(f"sqlite:///{tmp_path}/v.sqlite", MemoryKeyProvider.generated(), rng=rng) as v:
        v.init(actor=SERVICE)
        v.tokenize(ident("CANARY-MRN-A"), "E", actor=SERVICE)
        with pytest.raises(VaultError) as caught:
            v.tokenize(ident("CANARY-MRN-B"), "E", actor=SERVICE)
        assert caught.value.code == "VAULT_ALLOCATION_EXHAUSTED"


# --- enrollment ------------------------------------------------------------------------------


def test_enrollment_adopts_sponsor_cois_idempotently(vault: Vault) -> None:
    sponsor = Coi("A9990", "26", "QW3RT7")
    assignment = EnrollmentAssignment(ident("CANARY-MRN-0020"), "ENR-20", str(sponsor))
    assert vault.enroll_many([assignment], actor=SERVICE).enrolled == 1
    assert vault.enroll_many([assignment, assignment], actor=SERVICE).already == 2
    assert vault.tokenize(ident("CANARY-MRN-0020"), "ENR-20", actor=SERVICE) == sponsor
    assert vault.verify(str(sponsor), actor=SERVICE) is CoiStatus.KNOWN
    assert vault.status().cois_enrolled == 1


@pytest.mark.parametrize(
    "conflict",
    ["coi bound to another subject", "subject bound to another coi", "batch disagrees"],
)
def test_enrollment_conflicts_enroll_nothing_and_are_audited(vault: Vault, conflict: str) -> None:
    taken = vault.tokenize(ident("CANARY-MRN-0021"), "ENR-21", actor=SERVICE)
    fresh = EnrollmentAssignment(ident("CANARY-MRN-0022"), "ENR-22", Coi("A9990", "26", "AAAAA1"))
    if conflict == "coi bound to another subject":
        bad = EnrollmentAssignment(ident("CANARY-MRN-0023"), "ENR-23", taken)
    elif conflict == "subject bound to another coi":
        bad = EnrollmentAssignment(ident("CANARY-MRN-0021"), "ENR-21", Coi("A9990", "26", "BBBBB2"))
    else:
        bad = EnrollmentAssignment(ident("CANARY-MRN-0022"), "ENR-22", Coi("A9990", "26", "CCCCC3"))
    with pytest.raises(VaultError) as caught:
        vault.enroll_many([fresh, bad], actor=SERVICE)
    assert caught.value.code == "VAULT_ENROLL_CONFLICT"
    assert caught.value.where == "assignments[1]"
    assert "CANARY" not in str(caught.value)
    assert vault.lookup(ident("CANARY-MRN-0022"), "ENR-22", actor=SERVICE) is None
    refused = [e for e in audit_events(vault, "enroll") if e["outcome"] == "conflict"]
    assert len(refused) == 1 and refused[0]["details"]["code"] == "VAULT_ENROLL_CONFLICT"


def test_enrolling_a_malformed_coi_is_refused(vault: Vault) -> None:
    with pytest.raises(IdentifierError) as caught:
        vault.enroll_many(
            [EnrollmentAssignment(ident("CANARY-MRN-0024"), "E", "CHA999026QW3RT7X")], actor=SERVICE
        )
    assert caught.value.where == "assignments[0]"


# --- merges ----------------------------------------------------------------------------------


def test_a_merged_identifier_resolves_to_the_survivor(vault: Vault) -> None:
    survivor, retired = ident("CANARY-MRN-S"), ident("CANARY-MRN-R")
    s1 = vault.tokenize(survivor, "ENR-1", actor=SERVICE)
    r2 = vault.tokenize(retired, "ENR-2", actor=SERVICE)
    result = vault.merge(survivor, retired, actor=SERVICE, reason="ADT^A40 MSG-77")
    assert result.moved == [r2]
    # Both identifiers now name one subject: same COIs per event, whichever is presented.
    assert vault.tokenize(retired, "ENR-1", actor=SERVICE) == s1
    assert vault.tokenize(survivor, "ENR-2", actor=SERVICE) == r2
    new = vault.tokenize(retired, "ENR-3", actor=SERVICE)
    assert vault.lookup(survivor, "ENR-3", actor=SERVICE) == new
    assert vault.merge(survivor, retired, actor=SERVICE, reason="again").already_merged
    merges = audit_events(vault, "merge")
    assert merges[0]["purpose"] == "ADT^A40 MSG-77" and merges[0]["details"]["moved"] == 1


def test_merges_chain_and_conflicts_are_left_to_a_person(vault: Vault) -> None:
    a, b, c = ident("CANARY-MRN-A"), ident("CANARY-MRN-B"), ident("CANARY-MRN-C")
    a1 = vault.tokenize(a, "ENR-1", actor=SERVICE)
    vault.merge(b, a, actor=SERVICE, reason="A40 #1")  # a -> b
    vault.merge(c, b, actor=SERVICE, reason="A40 #2")  # b -> c, so a -> c as well
    assert vault.tokenize(c, "ENR-1", actor=SERVICE) == a1
    assert vault.tokenize(a, "ENR-1", actor=SERVICE) == a1
    d = ident("CANARY-MRN-D")
    d1 = vault.tokenize(d, "ENR-1", actor=SERVICE)
    for survivor, retired in ((c, d), (a, d), (d, a)):
        with pytest.raises(VaultError) as caught:
            vault.merge(survivor, retired, actor=SERVICE, reason="A40 #3")
        assert caught.value.code == "VAULT_MERGE_CONFLICT"
        assert "CANARY" not in str(caught.value)
    assert vault.tokenize(d, "ENR-1", actor=SERVICE) == d1  # nothing moved
    refused = [e for e in audit_events(vault, "merge") if e["outcome"] == "conflict"]
    assert len(refused) == 3
    with pytest.raises(VaultError, match="VAULT_MERGE_INVALID"):
        vault.merge(a, ident(" CANARY-MRN-A "), actor=SERVICE, reason="self")


# --- linkage ---------------------------------------------------------------------------------


def test_demographics_are_checked_for_linkage_and_never_stored(
    vault: Vault, tmp_path: Path
) -> None:
    first = ident("CANARY-MRN-0030", family_name="Canaryfamily", birth_date="1980-01-02")
    vault.tokenize(first, "E", actor=SERVICE)
    same = ident("CANARY-MRN-0030", family_name=" CANARYFAMILY", birth_date="19800102")
    other = ident("CANARY-MRN-0030", family_name="Canaryfamily", birth_date="1981-01-02")
    more = ident("CANARY-MRN-0030", given_name="Canarygiven")
    result = vault.tokenize_many_detailed(
        [TokenizeRequest(same, "E"), TokenizeRequest(other, "E"), TokenizeRequest(more, "E")],
        actor=SERVICE,
    )
    assert len(set(result.cois)) == 1 and result.new == [False, False, False]
    assert [(m.position, m.fields) for m in result.linkage_mismatches] == [(1, ("birth_date",))]
    mismatch = ident("CANARY-MRN-0030", given_name="Othergiven")
    later = vault.tokenize_many_detailed([TokenizeRequest(mismatch, "E")], actor=SERVICE)
    assert later.linkage_mismatches[0].fields == ("given_name",)  # the given name was learned
    assert [e["details"].get("linkage_mismatches") for e in audit_events(vault, "tokenize")] == [
        0,
        1,
        1,
    ]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("vault.sqlite*")).lower()
    for clear in (b"canaryfamily", b"canarygiven", b"1980-01-02", b"19800102"):
        assert clear not in raw


# --- re-identification -----------------------------------------------------------------------


def test_privacy_officers_reveal_with_purpose_and_ticket_and_everything_is_audited(
    vault: Vault,
) -> None:
    coi = vault.tokenize(ident("  CANARY-MRN-0040 "), "ENR-40", actor=SERVICE)
    refusals = [
        (SERVICE, "why", "T-1", "VAULT_ACCESS_DENIED"),
        (ENGINEER, "why", "T-1", "VAULT_ACCESS_DENIED"),
        (Actor("mallory", "privacy_officer"), "why", "T-1", "VAULT_ACCESS_DENIED"),  # not listed
        (Actor("alice", "data_engineer"), "why", "T-1", "VAULT_ACCESS_DENIED"),  # wrong hat
        (OFFICER, "  ", "T-1", "VAULT_PURPOSE_REQUIRED"),
        (OFFICER, "why", "", "VAULT_PURPOSE_REQUIRED"),
    ]
    for actor, purpose, ticket, code in refusals:
        with pytest.raises(AccessDenied) as caught:
            vault.reveal(str(coi), actor=actor, purpose=purpose, ticket=ticket)
        assert caught.value.code == code
    revealed = vault.reveal(str(coi), actor=OFFICER, purpose="AE follow-up", ticket="PV-1")
    assert revealed.coi == coi
    assert revealed.identity.system == SYSTEM
    assert revealed.identity.value.reveal() == "CANARY-MRN-0040"
    assert "CANARY" not in repr(revealed)
    assert revealed.therapy_event == "ENR-40" and revealed.created_by == SERVICE.name
    refused = audit_events(vault, "refuse")
    assert [e["details"]["code"] for e in refused] == [r[3] for r in refusals]
    assert all(e["coi"] == str(coi) for e in refused)
    granted = audit_events(vault, "reveal")
    assert [(e["actor"], e["outcome"], e["purpose"], e["ticket"]) for e in granted] == [
        ("alice", "granted", "AE follow-up", "PV-1")
    ]


def test_revealing_an_unknown_or_malformed_coi_is_audited(vault: Vault) -> None:
    unknown = Coi("A9999", "26", "NOPE00")
    with pytest.raises(VaultError) as caught:
        vault.reveal(str(unknown), actor=OFFICER, purpose="p", ticket="t")
    assert caught.value.code == "VAULT_COI_UNKNOWN"
    with pytest.raises(IdentifierError):
        vault.reveal(unknown.body + "?", actor=OFFICER, purpose="p", ticket="t")
    assert [e["outcome"] for e in audit_events(vault) if e["event"] in ("reveal", "refuse")] == [
        "unknown",
        "refused",
    ]


def test_ciphertext_that_fails_authentication_is_a_clear_audited_error(
    vault: Vault, tmp_path: Path
) -> None:
    a = vault.tokenize(ident("CANARY-MRN-0050"), "E", actor=SERVICE)
    b = vault.tokenize(ident("CANARY-MRN-0051"), "E", actor=SERVICE)
    with db(tmp_path) as con:
        sealed = dict(con.execute("SELECT coi, sealed FROM vault_coi").fetchall())
        flipped = bytearray(sealed[str(a)])
        flipped[20] ^= 1
        con.execute("UPDATE vault_coi SET sealed = ? WHERE coi = ?", (bytes(flipped), str(a)))
        # b's ciphertext moved onto a's row would decrypt to b's identifier: the COI is bound.
    for tampered in (bytes(flipped), sealed[str(b)]):
        with db(tmp_path) as con:
            con.execute("UPDATE vault_coi SET sealed = ? WHERE coi = ?", (tampered, str(a)))
        with pytest.raises(CryptoError) as caught:
            vault.reveal(str(a), actor=OFFICER, purpose="p", ticket="t")
        assert caught.value.code == "VAULT_DECRYPT_FAILED"
        assert "CANARY" not in str(caught.value)
    with pytest.raises(CryptoError):  # all or nothing: b is not returned either
        vault.reveal_many([str(b), str(a)], actor=OFFICER, purpose="p", ticket="t")
    outcomes = [e["outcome"] for e in audit_events(vault, "reveal")]
    assert outcomes == ["decrypt_failed", "decrypt_failed", "granted", "decrypt_failed"]


# --- withdrawal ------------------------------------------------------------------------------


def test_withdrawal_destroys_the_identifier_and_keeps_the_coi(vault: Vault, tmp_path: Path) -> None:
    coi = vault.tokenize(ident("CANARY-MRN-0060"), "ENR-60", actor=SERVICE)
    with db(tmp_path) as con:
        sealed, subject = con.execute(
            "SELECT sealed, subject FROM vault_coi WHERE coi = ?", (str(coi),)
        ).fetchone()
    with pytest.raises(AccessDenied):
        vault.withdraw(str(coi), actor=ENGINEER, reason="consent withdrawn")
    with pytest.raises(VaultError, match="VAULT_REASON_REQUIRED"):
        vault.withdraw(str(coi), actor=OFFICER, reason=" ")
    result = vault.withdraw(str(coi), actor=OFFICER, reason="consent withdrawn, CW-60")
    assert result.coi == coi and not result.already_withdrawn
    assert vault.withdraw(str(coi), actor=OFFICER, reason="again").already_withdrawn
    assert vault.verify(str(coi), actor=SERVICE) is CoiStatus.WITHDRAWN
    with pytest.raises(VaultError) as caught:
        vault.reveal(str(coi), actor=OFFICER, purpose="p", ticket="t")
    assert caught.value.code == "VAULT_COI_WITHDRAWN"
    with db(tmp_path) as con:
        row = con.execute(
            "SELECT subject, event, sealed, data_key_id, status, withdrawn_at FROM vault_coi "
            "WHERE coi = ?",
            (str(coi),),
        ).fetchone()
    assert row[:4] == (None, None, None, None) and row[4] == "withdrawn" and row[5]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("vault.sqlite*"))
    assert sealed not in raw and subject not in raw  # overwritten on disk, not just unlinked
    # The vault no longer knows the subject: a new arrival is a new COI (documented).
    assert vault.tokenize(ident("CANARY-MRN-0060"), "ENR-60", actor=SERVICE) != coi
    events = audit_events(vault, "withdraw")
    assert [(e["outcome"], e["coi"]) for e in events] == [
        ("ok", str(coi)),
        ("already_withdrawn", str(coi)),
    ]


# --- faults ----------------------------------------------------------------------------------


def test_a_database_that_is_down_is_a_transient_error() -> None:
    vault = Vault("postgresql://postgres@127.0.0.1:1/nowhere", MemoryKeyProvider.generated())
    with pytest.raises(StoreUnavailable) as caught:
        vault.tokenize(ident("CANARY-MRN-0070"), "E", actor=SERVICE)
    assert is_retryable(caught.value)
    assert caught.value.code == "VAULT_STORE_UNAVAILABLE"
    assert "CANARY" not in str(caught.value) and "CANARY" not in repr(caught.value.__cause__)


def test_an_unopenable_sqlite_file_is_a_transient_error(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-file"
    folder.mkdir()
    with pytest.raises(StoreUnavailable):
        Vault.open(f"sqlite:///{folder}", MemoryKeyProvider.generated())


def test_an_uninitialized_database_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(VaultError) as caught:
        Vault.open(f"sqlite:///{tmp_path}/empty.sqlite", MemoryKeyProvider.generated())
    assert caught.value.code == "VAULT_NOT_INITIALIZED"
    assert "cmohub vault init" in caught.value.message


def test_missing_keys_are_a_config_error(vault: Vault) -> None:
    provider = vault.key_provider
    assert isinstance(provider, MemoryKeyProvider)
    provider.forget(KeyPurpose.INDEX, 1)
    fresh = Vault(vault.engine, provider)
    with pytest.raises(ConfigError) as caught:
        fresh.tokenize(ident("CANARY-MRN-0080"), "E", actor=SERVICE)
    assert caught.value.code == "VAULT_KEY_MISSING"


def test_configuration_mistakes_are_caught_early(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VAULT_FIN_INVALID"):
        Vault("sqlite://", MemoryKeyProvider.generated(), fin="O1234")
    with pytest.raises(ConfigError, match="VAULT_URL_UNSUPPORTED"):
        Vault("mysql://x@y/z", MemoryKeyProvider.generated())
    naive = Vault.ephemeral()
    naive._clock = lambda: datetime(2026, 1, 1)  # noqa: DTZ001 - the mistake under test
    with pytest.raises(ConfigError, match="VAULT_CLOCK_INVALID"):
        naive.tokenize(ident("CANARY-MRN-0090"), "E", actor=SERVICE)


def test_ephemeral_vaults_are_independent() -> None:
    one, two = Vault.ephemeral(), Vault.ephemeral()
    a = one.tokenize(ident("CANARY-MRN-0100"), "E", actor=SERVICE)
    assert two.verify(str(a), actor=SERVICE) is CoiStatus.UNKNOWN
    assert one.tokenize(ident("CANARY-MRN-0100"), "E", actor=SERVICE) == a
    assert one.verify_audit().intact


def test_the_migrated_schema_is_the_declared_schema(vault: Vault) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cmohub.vault.schema import VERSION_TABLE, metadata

    with vault.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_the_sponsor_enrollment_register_is_imported(vault: Vault, tmp_path: Path) -> None:
    from cmohub.vault.enrollment import load_enrollments

    sponsor = Coi("A9991", "26", "34LT9B")
    lines = [
        json.dumps(
            {
                "therapy_event": "SBX-TE-000001",
                "subject": {"system": "urn:cmohub:sandbox:mrn:A9991", "value": "CANARY-MRN-ENR"},
                "demographics": {
                    "family": "Canaryfam",
                    "given": "Alfa",
                    "birth_date": "1992-08-20",
                },
                "coi": str(sponsor),
                "product_code": "SBX-CART-01",
                "site": "A9991",
                "enrolled_at": "2026-01-05T14:43:00-05:00",
            }
        ),
        "",
    ]
    assignments = load_enrollments(lines)
    assert vault.enroll_many(assignments, actor=SERVICE).enrolled == 1
    subject = ident("CANARY-MRN-ENR", "urn:cmohub:sandbox:mrn:A9991")
    assert vault.tokenize(subject, "SBX-TE-000001", actor=SERVICE) == sponsor
    for bad in ("{not json", '{"subject": {"system": "urn:oid:1.2"}, "coi": "x"}', "[]"):
        with pytest.raises(VaultError) as caught:
            load_enrollments(["", bad])
        assert caught.value.code == "VAULT_ENROLLMENT_INVALID" and caught.value.where == "line 2"
