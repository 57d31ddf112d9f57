"""Envelope encryption: what the vault and the encrypted raw store rely on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmohub.crypto.envelope import (
    DataKey,
    decrypt_envelope,
    encrypt_envelope,
    envelope_kek_version,
    generate_key,
    open_sealed,
    rewrap_envelope,
    seal,
    unwrap_key,
    wrap_key,
)
from cmohub.errors import CryptoError

CANARY = b"CANARY-MRN-ENVELOPE-1"


def test_a_sealed_value_opens_only_with_its_key_and_associated_data() -> None:
    key = generate_key()
    sealed = seal(key, CANARY, aad=b"CHA999926AB12C3G")
    assert CANARY not in sealed
    assert open_sealed(key, sealed, aad=b"CHA999926AB12C3G") == CANARY
    for wrong_key, aad in ((generate_key(), b"CHA999926AB12C3G"), (key, b"CHA999926ZZZZZZ5")):
        with pytest.raises(CryptoError) as caught:
            open_sealed(wrong_key, sealed, aad=aad)
        assert caught.value.code == "CRYPTO_AUTH_FAILED"


def test_altered_or_truncated_ciphertext_fails_authentication_and_returns_nothing() -> None:
    key = DataKey(generate_key())
    sealed = key.seal(CANARY, b"row")
    for altered in (
        sealed[:-1] + bytes([sealed[-1] ^ 1]),
        sealed[:12] + bytes([sealed[12] ^ 0x80]) + sealed[13:],
        sealed[:20],
        b"",
    ):
        with pytest.raises(CryptoError) as caught:
            key.open(altered, b"row")
        assert caught.value.code == "CRYPTO_AUTH_FAILED"
        assert CANARY.decode() not in str(caught.value)


def test_two_seals_of_the_same_value_differ() -> None:
    key = DataKey(generate_key())
    assert key.seal(CANARY, b"x") != key.seal(CANARY, b"x")


def test_a_batch_seals_each_value_under_its_own_nonce_and_associated_data() -> None:
    key = DataKey(generate_key())
    values = [CANARY + str(i).encode() for i in range(200)] + [CANARY, CANARY]
    aads = [f"CHA999926AB{i:04d}".encode() for i in range(len(values))]
    sealed = key.seal_many(values, aads)
    assert [key.open(s, a) for s, a in zip(sealed, aads, strict=True)] == values
    assert len({s[:12] for s in sealed}) == len(values)  # fresh random nonces, none reused
    assert sealed[-1] != sealed[-2]
    assert all(CANARY not in s for s in sealed)
    with pytest.raises(CryptoError):
        key.open(sealed[0], aads[1])  # bound to its own row
    assert key.seal_many([], []) == []
    with pytest.raises(ValueError, match="one associated data per plaintext"):
        key.seal_many(values, aads[:-1])


def test_wrapped_data_keys_need_the_kek_and_their_context() -> None:
    kek, data_key = generate_key(), generate_key()
    wrapped = wrap_key(kek, data_key, context=b"key-1")
    assert data_key not in wrapped
    assert unwrap_key(kek, wrapped, context=b"key-1") == data_key
    with pytest.raises(CryptoError, match="CRYPTO_AUTH_FAILED"):
        unwrap_key(generate_key(), wrapped, context=b"key-1")
    with pytest.raises(CryptoError, match="CRYPTO_AUTH_FAILED"):
        unwrap_key(kek, wrapped, context=b"key-2")


@pytest.mark.parametrize("bad", [b"", b"short", bytes(31), bytes(33)])
def test_keys_must_be_32_bytes(bad: bytes) -> None:
    with pytest.raises(CryptoError) as caught:
        DataKey(bad)
    assert caught.value.code == "CRYPTO_KEY_INVALID"
    with pytest.raises(CryptoError):
        wrap_key(bad, generate_key(), context=b"")


def test_envelopes_survive_kek_rotation_without_touching_the_ciphertext() -> None:
    keks = {1: generate_key(), 2: generate_key()}
    envelope = encrypt_envelope(CANARY * 100, kek=keks[1], kek_version=1, aad=b"raw/fhir/ab")
    assert envelope_kek_version(envelope) == 1
    assert CANARY not in envelope
    rotated = rewrap_envelope(
        envelope, kek_for=keks.__getitem__, new_kek=keks[2], new_kek_version=2
    )
    assert envelope_kek_version(rotated) == 2
    assert rotated[-200:] == envelope[-200:]  # the payload ciphertext is unchanged
    del keks[1]  # the old KEK can be destroyed once everything is re-wrapped
    assert decrypt_envelope(rotated, kek_for=keks.__getitem__, aad=b"raw/fhir/ab") == CANARY * 100
    with pytest.raises(CryptoError) as caught:
        decrypt_envelope(envelope, kek_for=keks.__getitem__, aad=b"raw/fhir/ab")
    assert caught.value.code == "CRYPTO_KEK_UNKNOWN"
    with pytest.raises(CryptoError, match="CRYPTO_AUTH_FAILED"):
        decrypt_envelope(rotated, kek_for=keks.__getitem__, aad=b"raw/fhir/cd")


@pytest.mark.parametrize("bad", [b"", b"CMHE", b"XXXX\x01\x00\x00\x00\x01\x00\x10" + bytes(40)])
def test_malformed_envelopes_are_rejected_with_a_code(bad: bytes) -> None:
    with pytest.raises(CryptoError) as caught:
        decrypt_envelope(bad, kek_for=lambda _v: generate_key())
    assert caught.value.code == "CRYPTO_ENVELOPE_INVALID"


@given(payload=st.binary(max_size=2048), aad=st.binary(max_size=64))
def test_envelope_round_trip(payload: bytes, aad: bytes) -> None:
    kek = bytes(range(32))
    envelope = encrypt_envelope(payload, kek=kek, kek_version=7, aad=aad)
    assert decrypt_envelope(envelope, kek_for=lambda _v: kek, aad=aad) == payload
