"""Key rotation: no COI changes, every lookup and every reveal still succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.vault_support import OFFICER, SYSTEM

from cmohub.errors import ConfigError
from cmohub.identity import Actor, SubjectIdentity, TokenizeRequest
from cmohub.sensitive import Sensitive
from cmohub.vault import KeyPurpose, MemoryKeyProvider, Roles, Vault

SERVICE = Actor("pipeline:vault_maintenance", "service")


def request(i: int) -> TokenizeRequest:
    value = Sensitive(f"CANARY-MRN-{i:06d}")
    return TokenizeRequest(SubjectIdentity(system=SYSTEM, value=value), f"ENR-{i % 4}")


@pytest.mark.slow
def test_100k_subjects_survive_two_index_and_two_kek_rotations(tmp_path: Path) -> None:
    n = 100_000
    vault = Vault(
        f"sqlite:///{tmp_path}/vault.sqlite",
        MemoryKeyProvider.generated(),
        roles=Roles({"alice": ["privacy_officer"]}),
    )
    vault.init(actor=SERVICE)
    requests = [request(i) for i in range(n)]
    cois = []
    for start in range(0, n, 25_000):
        cois.extend(vault.tokenize_many(requests[start : start + 25_000], actor=SERVICE))
    assert len(set(cois)) == n
    # A few merged identifiers, so that aliases are re-indexed too.
    for i in range(5):
        survivor = SubjectIdentity(system=SYSTEM, value=Sensitive(f"CANARY-MRN-NEW-{i}"))
        vault.merge(survivor, requests[i].identity, actor=SERVICE, reason=f"A40 #{i}")

    for _ in range(2):
        assert vault.rotate_index_key(actor=SERVICE).rows == n
        assert vault.rotate_kek(actor=SERVICE).rows >= 1

    status = vault.status()
    assert (status.index_version, status.kek_version) == (3, 3)
    assert status.rows_by_index_version == {3: n}
    assert set(status.data_keys_by_kek_version) == {3}
    again = vault.tokenize_many_detailed(requests, actor=SERVICE)
    assert again.cois == cois and again.new_count == 0  # no COI changed, none was added
    assert vault.lookup_many(requests, actor=SERVICE) == cois
    survivor = SubjectIdentity(system=SYSTEM, value=Sensitive("CANARY-MRN-NEW-3"))
    assert vault.lookup(survivor, "ENR-3", actor=SERVICE) == cois[3]
    revealed = vault.reveal_many([str(c) for c in cois], actor=OFFICER, purpose="drill", ticket="T")
    assert [r.identity.value.reveal() for r in revealed] == [
        f"CANARY-MRN-{i:06d}" for i in range(n)
    ]
    assert [r.therapy_event for r in revealed[:5]] == ["ENR-0", "ENR-1", "ENR-2", "ENR-3", "ENR-0"]
    assert vault.verify_audit().intact


def test_rotation_needs_the_next_key_from_a_read_only_provider(tmp_path: Path) -> None:
    class ReadOnly(MemoryKeyProvider):
        def create(self, purpose: KeyPurpose) -> int:
            raise ConfigError("provision it", code="VAULT_KEY_READONLY")

    provider = ReadOnly()
    for purpose in KeyPurpose:
        MemoryKeyProvider.create(provider, purpose)
    vault = Vault(f"sqlite:///{tmp_path}/v.sqlite", provider)
    vault.init(actor=SERVICE)
    coi = vault.tokenize(request(1).identity, "ENR-1", actor=SERVICE)
    with pytest.raises(ConfigError, match="VAULT_KEY_READONLY"):
        vault.rotate_index_key(actor=SERVICE)
    MemoryKeyProvider.create(provider, KeyPurpose.INDEX)  # the operator provisions v2
    assert vault.rotate_index_key(actor=SERVICE).to_version == 2
    with pytest.raises(ConfigError, match="VAULT_KEY_READONLY"):
        vault.rotate_index_key(actor=SERVICE)  # v3 is not provisioned yet
    assert vault.lookup(request(1).identity, "ENR-1", actor=SERVICE) == coi


def test_rotation_is_audited_and_checkpointed(tmp_path: Path) -> None:
    vault = Vault.ephemeral()
    vault.tokenize(request(2).identity, "E", actor=SERVICE)
    before = vault.latest_checkpoint()
    result = vault.rotate_kek(actor=SERVICE)
    after = vault.latest_checkpoint()
    assert (result.from_version, result.to_version) == (1, 2)
    assert before is not None and after is not None and after.size > before.size
    assert vault.verify_audit().intact
