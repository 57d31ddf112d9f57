"""OpenPGP with the pgpy backend: keys, policy, round trips, and the bad-message corpus.

The same corpus runs against the GnuPG backend in tests/integration/test_gnupg_interop.py.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cmohub.crypto import openpgp as pgp
from cmohub.crypto.packets import scan_bytes
from cmohub.sandbox.deliver import (
    BAD_DELIVERY_NAMES,
    BadDelivery,
    CorpusKeys,
    bad_message_corpus,
    corpus_keys,
)
from cmohub.sensitive import Sensitive

PAYLOAD = (
    b"BatchRef;ResultRef;Assay;Value;Unit;ResultState;CompletedUTC\n"
    b"BOR2600101;R00000101;VIA;92,4;%;FINAL;28.01.2026 09:41:00\n"
) * 40
BACKEND = pgp.PgpyBackend()


@pytest.fixture(scope="module")
def keys() -> CorpusKeys:
    return corpus_keys()


@pytest.fixture(scope="module")
def corpus(keys: CorpusKeys) -> list[BadDelivery]:
    return bad_message_corpus(PAYLOAD, keys)


def test_a_signed_and_encrypted_file_round_trips(keys: CorpusKeys) -> None:
    message = pgp.sign_encrypt(
        PAYLOAD, signer=keys.cmo, recipients=[keys.hub.public], file_name="LIMS.csv"
    )
    assert message is not None and PAYLOAD not in message
    verified = pgp.verify_decrypt(
        message, sender=keys.cmo.public, recipient=keys.hub, backend=BACKEND
    )
    assert verified.data == PAYLOAD
    assert verified.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert verified.signer == keys.cmo.fingerprint
    assert verified.signature.hash_algorithm == "SHA512"
    assert verified.file_name == "LIMS.csv"
    assert verified.backend == "pgpy"


def test_outgoing_messages_use_aes256_and_skip_compressing_compressed_payloads(
    keys: CorpusKeys,
) -> None:
    parquet_like = b"PAR1" + bytes(range(256)) * 64
    message = pgp.sign_encrypt(parquet_like, signer=keys.cmo, recipients=[keys.hub.public])
    assert message is not None
    shape = scan_bytes(message)
    assert shape.integrity == "mdc"
    assert {p.key_id for p in keys.hub.public.parts} & set(shape.recipients)
    assert not pgp.should_compress(parquet_like)
    assert pgp.should_compress(PAYLOAD)
    verified = pgp.verify_decrypt(message, sender=keys.cmo.public, recipient=keys.hub)
    assert verified.data == parquet_like


def test_a_message_to_several_recipients_opens_for_each(keys: CorpusKeys) -> None:
    message = pgp.encrypt_to(PAYLOAD, [keys.hub.public, keys.other.public], keys.cmo)
    for recipient in (keys.hub, keys.other):
        verified = pgp.verify_decrypt(message, sender=keys.cmo.public, recipient=recipient)
        assert verified.data == PAYLOAD


@pytest.mark.parametrize("name", BAD_DELIVERY_NAMES)
def test_every_bad_message_is_rejected_with_its_own_code_and_leaves_nothing(
    name: str, corpus: list[BadDelivery], keys: CorpusKeys, tmp_path: Path
) -> None:
    bad = next(b for b in corpus if b.name == name)
    out = tmp_path / "out" / "plaintext.csv"
    out.parent.mkdir()
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.verify_decrypt(
            bad.message, sender=bad.sender, recipient=keys.hub, out=out, backend=BACKEND
        )
    assert caught.value.code == bad.code
    assert list(out.parent.iterdir()) == []  # no plaintext, no temporary file
    assert "BOR2600101" not in str(caught.value)


def test_the_corpus_codes_are_distinct_and_documented(corpus: list[BadDelivery]) -> None:
    codes = [b.code for b in corpus]
    assert len(set(codes)) == len(codes)
    assert set(codes) <= set(pgp.REJECTION_CODES)


def test_a_file_over_the_size_limit_is_refused_before_decryption(keys: CorpusKeys) -> None:
    message = pgp.sign_encrypt(PAYLOAD, signer=keys.cmo, recipients=[keys.hub.public])
    assert message is not None
    small = pgp.Policy(max_bytes=len(message) - 1)
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.verify_decrypt(message, sender=keys.cmo.public, recipient=keys.hub, policy=small)
    assert caught.value.code == "CRYPTO_TOO_LARGE"


def test_a_compression_bomb_is_stopped_at_the_plaintext_limit(keys: CorpusKeys) -> None:
    bomb = b"0" * (4 << 20)  # 4 MiB of zeros compress to a few kB
    message = pgp.sign_encrypt(bomb, signer=keys.cmo, recipients=[keys.hub.public], compress=True)
    assert message is not None and len(message) < 64 * 1024
    policy = pgp.Policy(max_bytes=1 << 20)
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.verify_decrypt(message, sender=keys.cmo.public, recipient=keys.hub, policy=policy)
    assert caught.value.code == "CRYPTO_TOO_LARGE"


def test_expiry_is_judged_at_signing_time_not_today(keys: CorpusKeys) -> None:
    # Signed inside the expired key's 30 days of validity: still a valid signature today.
    signed_then = keys.expired.public.primary.created + timedelta(days=10)
    message = pgp.build_message(
        PAYLOAD, recipient=keys.hub.public, signer=keys.expired, now=signed_then
    )
    verified = pgp.verify_decrypt(message, sender=keys.expired.public, recipient=keys.hub)
    assert verified.signature.signed_at == signed_then
    # Dated before the key existed, or far in the future: refused.
    for when in (datetime(2023, 6, 1, tzinfo=UTC), datetime.now(tz=UTC) + timedelta(days=2)):
        message = pgp.build_message(PAYLOAD, recipient=keys.hub.public, signer=keys.cmo, now=when)
        with pytest.raises(pgp.OpenPgpError) as caught:
            pgp.verify_decrypt(message, sender=keys.cmo.public, recipient=keys.hub)
        assert caught.value.code == "CRYPTO_SIGNATURE_TIME"


def test_our_own_expired_or_revoked_key_does_not_sign(keys: CorpusKeys) -> None:
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.sign_encrypt(PAYLOAD, signer=keys.expired, recipients=[keys.hub.public])
    assert caught.value.code == "CRYPTO_KEY_EXPIRED"
    revoked = pgp.revoke_key(keys.other)
    assert revoked.revoked and revoked.primary.revocation_reason == "Compromised"
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.sign_encrypt(PAYLOAD, signer=keys.cmo, recipients=[revoked])
    assert caught.value.code == "CRYPTO_KEY_REVOKED"


def test_pins_are_full_fingerprints(keys: CorpusKeys, tmp_path: Path) -> None:
    path = tmp_path / "cmo.asc"
    path.write_bytes(keys.cmo.public.armored)
    fingerprint = keys.cmo.fingerprint
    spaced = " ".join(fingerprint[i : i + 4] for i in range(0, 40, 4))
    assert pgp.load_public_key(path, pinned=spaced).fingerprint == fingerprint
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.load_public_key(path, pinned=keys.other.fingerprint)
    assert caught.value.code == "CRYPTO_PIN_MISMATCH"
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.load_public_key(path, pinned=fingerprint[-16:])  # a key ID is not a pin
    assert caught.value.code == "CRYPTO_KEY_INVALID"


def test_weak_keys_are_refused(keys: CorpusKeys) -> None:
    weak = pgp.generate_key("Weak CMO", "weak@sandbox.invalid", bits=2048)
    message = pgp.sign_encrypt(
        PAYLOAD, signer=weak, recipients=[keys.hub.public], policy=pgp.Policy(min_rsa_bits=2048)
    )
    assert message is not None
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.verify_decrypt(message, sender=weak.public, recipient=keys.hub)
    assert caught.value.code == "CRYPTO_WEAK_ALGORITHM"


def test_a_protected_secret_key_needs_its_passphrase(tmp_path: Path) -> None:
    key = pgp.generate_key("Hub", "hub@sandbox.invalid", passphrase=Sensitive("correct horse"))
    path = tmp_path / "hub.sec.asc"
    path.write_bytes(key.armored)
    assert b"PRIVATE KEY" in key.armored
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.load_secret_key(path)
    assert caught.value.code == "CRYPTO_PASSPHRASE"
    wrong = pgp.load_secret_key(path, passphrase=Sensitive("wrong"))
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.sign_detached(b"x", wrong)
    assert caught.value.code == "CRYPTO_PASSPHRASE"
    right = pgp.load_secret_key(path, passphrase=Sensitive("correct horse"))
    signature = pgp.sign_detached(b"manifest", right)
    assert pgp.verify_detached(b"manifest", signature, right.public).signer == right.fingerprint


def test_detached_signatures_for_release_manifests(keys: CorpusKeys) -> None:
    manifest = b'{"files": []}\n'
    signer = pgp.DetachedSigner(keys.hub)
    signature = signer.sign_detached(manifest)
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----")
    verifier = pgp.PinnedVerifier(keys.hub.public, keys.hub.fingerprint)
    verifier.verify_detached(manifest, signature)
    with pytest.raises(pgp.OpenPgpError) as caught:
        verifier.verify_detached(manifest + b" ", signature)
    assert caught.value.code == "CRYPTO_BAD_SIGNATURE"
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.PinnedVerifier(keys.cmo.public, keys.cmo.fingerprint).verify_detached(
            manifest, signature
        )
    assert caught.value.code == "CRYPTO_SIGNER_NOT_PINNED"
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.PinnedVerifier(keys.cmo.public, keys.hub.fingerprint)
    assert caught.value.code == "CRYPTO_PIN_MISMATCH"


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def test_armored_messages_are_read_too(keys: CorpusKeys) -> None:
    import base64

    message = pgp.sign_encrypt(PAYLOAD, signer=keys.cmo, recipients=[keys.hub.public])
    assert message is not None
    body = base64.b64encode(message).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    crc = base64.b64encode(_crc24(message).to_bytes(3, "big")).decode()
    armored = (
        f"-----BEGIN PGP MESSAGE-----\n\n{lines}\n={crc}\n-----END PGP MESSAGE-----\n"
    ).encode()
    verified = pgp.verify_decrypt(armored, sender=keys.cmo.public, recipient=keys.hub)
    assert verified.data == PAYLOAD
    cut = armored[: len(armored) // 2]
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.verify_decrypt(cut, sender=keys.cmo.public, recipient=keys.hub)
    assert caught.value.code == "CRYPTO_TRUNCATED"


def test_large_files_go_to_the_streaming_backend_when_gpg_is_there() -> None:
    policy = pgp.Policy(stream_threshold=1000)
    assert pgp.choose_backend(999, policy).name == "pgpy"
    expected = "gnupg" if pgp.gnupg_available() else "pgpy"
    assert pgp.choose_backend(1001, policy).name == expected


def test_partial_body_lengths_are_made_definite_for_pgpy() -> None:
    from cmohub.crypto.packets import definite_lengths, first_packet

    body = bytes(range(256)) * 40  # 10240 bytes: chunks of 4096, 4096, then 2048 definite
    partial = (
        bytes([0xCB, 0xE0 + 12]) + body[:4096] + bytes([0xE0 + 12]) + body[4096:8192]
        + bytes([0xC0 + ((2048 - 192) >> 8), (2048 - 192) & 0xFF]) + body[8192:]
    )  # fmt: skip
    rewritten = definite_lengths(partial + bytes([0xC2, 3]) + b"sig")
    tag, found, rest = first_packet(rewritten)
    assert (tag, found, rest) == (11, body, bytes([0xC2, 3]) + b"sig")
