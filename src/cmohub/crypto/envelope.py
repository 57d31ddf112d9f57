"""Envelope encryption: AES-256-GCM data keys, wrapped by a key-encryption key (KEK).

Values are encrypted under a random 256-bit **data key** (DEK) with AES-256-GCM; the data key
is stored only **wrapped** (itself AES-256-GCM encrypted) by a KEK that lives outside the
data store (a key file or a secret). Rotating the KEK re-wraps data keys and leaves every
ciphertext as it is.

Two ways to use it:

* **Keyed values** (the vault): :class:`DataKey` seals many small values under one data key;
  the caller stores the data key once, wrapped with :func:`wrap_key`, and each sealed value
  next to a reference to it. Associated data binds a ciphertext to its row (the vault uses
  the COI), so a ciphertext copied to another row does not open.
* **Self-contained envelopes** (the encrypted raw clinical store): :func:`encrypt_envelope`
  returns one byte string holding the KEK version, the wrapped data key and the ciphertext;
  :func:`decrypt_envelope` opens it given a lookup from KEK version to KEK, and
  :func:`rewrap_envelope` moves it to a new KEK without touching the ciphertext.

Formats (all integers big-endian)::

    sealed value    nonce (12) | ciphertext | tag (16)
    envelope        b"CMHE" | format 1 (1) | KEK version (4) | wrapped key length (2)
                    | wrapped data key (sealed value) | sealed payload

Nonces are 96 random bits per encryption (NIST SP 800-38D §8.2.2); callers keep the number of
values sealed under one data key far below 2**32 (the vault starts a new data key every
2**24 values). :meth:`DataKey.seal_many` draws the nonces of a whole batch with one call to the
operating system's CSPRNG and slices them (the same 96 random bits each, without a system call
per value). Payloads of a self-contained envelope are limited to 2**31 - 1 bytes.

Errors are :class:`~cmohub.errors.CryptoError` with one of these codes; messages never carry
key material or plaintext:

========================= ===============================================================
CRYPTO_KEY_INVALID        a key is not 32 bytes
CRYPTO_AUTH_FAILED        a ciphertext or wrapped key failed authentication (wrong key,
                          wrong associated data, or altered bytes); nothing is returned
CRYPTO_ENVELOPE_INVALID   an envelope is truncated or not in this format
CRYPTO_KEK_UNKNOWN        the envelope names a KEK version the caller cannot provide
========================= ===============================================================
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cmohub.errors import CryptoError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_PAYLOAD = 2**31 - 1

_WRAP_CONTEXT = b"cmohub.crypto.wrap.v1\x00"
_ENVELOPE_MAGIC = b"CMHE"
_ENVELOPE_FORMAT = 1
_ENVELOPE_HEADER = struct.Struct(">4sBIH")
_ENVELOPE_AAD = b"cmohub.crypto.envelope.v1\x00"
_ENVELOPE_WRAP = b"envelope"


def generate_key() -> bytes:
    """A new random 256-bit key (data key or KEK) from the operating system's CSPRNG."""
    return AESGCM.generate_key(bit_length=256)


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise CryptoError(f"{what} must be {KEY_BYTES} bytes", code="CRYPTO_KEY_INVALID")


class DataKey:
    """An unwrapped AES-256-GCM key that seals and opens values with associated data."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        _check_key(key, "data key")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "DataKey(<redacted>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``nonce | ciphertext | tag`` of ``plaintext``, bound to ``aad``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def seal_many(self, plaintexts: Sequence[bytes], aads: Sequence[bytes]) -> list[bytes]:
        """:meth:`seal` of each plaintext with the associated data at the same position."""
        if len(plaintexts) != len(aads):
            raise ValueError("seal_many needs one associated data per plaintext")
        # One read of the CSPRNG for every nonce: a system call per value cost more than the
        # encryption itself.
        nonces = os.urandom(NONCE_BYTES * len(plaintexts))
        encrypt = self._aead.encrypt
        sealed: list[bytes] = []
        append = sealed.append
        start = 0
        for plaintext, aad in zip(plaintexts, aads, strict=True):
            nonce = nonces[start : start + NONCE_BYTES]
            append(nonce + encrypt(nonce, plaintext, aad))
            start += NONCE_BYTES
        return sealed

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of a sealed value, or CryptoError(CRYPTO_AUTH_FAILED); never partial."""
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise CryptoError("sealed value is truncated", code="CRYPTO_AUTH_FAILED")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise CryptoError(
                "ciphertext failed authentication (wrong key, wrong context or altered bytes)",
                code="CRYPTO_AUTH_FAILED",
            ) from None


def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """Encrypt one value under ``key`` (see :meth:`DataKey.seal`)."""
    return DataKey(key).seal(plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, *, aad: bytes) -> bytes:
    """Decrypt one value sealed under ``key`` (see :meth:`DataKey.open`)."""
    return DataKey(key).open(sealed, aad)


def wrap_key(kek: bytes, data_key: bytes, *, context: bytes) -> bytes:
    """``data_key`` encrypted under the KEK; ``context`` (e.g. the data key's ID) is bound."""
    _check_key(kek, "key-encryption key")
    _check_key(data_key, "data key")
    return DataKey(kek).seal(data_key, _WRAP_CONTEXT + context)


def unwrap_key(kek: bytes, wrapped: bytes, *, context: bytes) -> bytes:
    """The data key inside ``wrapped``; CryptoError(CRYPTO_AUTH_FAILED) if the KEK is wrong."""
    _check_key(kek, "key-encryption key")
    key = DataKey(kek).open(wrapped, _WRAP_CONTEXT + context)
    _check_key(key, "unwrapped data key")
    return key


# --- self-contained envelopes ----------------------------------------------------------------


def encrypt_envelope(plaintext: bytes, *, kek: bytes, kek_version: int, aad: bytes = b"") -> bytes:
    """Encrypt ``plaintext`` under a fresh data key wrapped by ``kek`` (version ``kek_version``)."""
    if len(plaintext) > MAX_PAYLOAD:
        raise CryptoError("payload too large for one envelope", code="CRYPTO_ENVELOPE_INVALID")
    if not 0 <= kek_version < 2**32:
        raise CryptoError("KEK version out of range", code="CRYPTO_ENVELOPE_INVALID")
    data_key = generate_key()
    wrapped = wrap_key(kek, data_key, context=_ENVELOPE_WRAP)
    body = DataKey(data_key).seal(plaintext, _ENVELOPE_AAD + aad)
    header = _ENVELOPE_HEADER.pack(_ENVELOPE_MAGIC, _ENVELOPE_FORMAT, kek_version, len(wrapped))
    return header + wrapped + body


def _split_envelope(envelope: bytes) -> tuple[int, bytes, bytes]:
    if len(envelope) < _ENVELOPE_HEADER.size:
        raise CryptoError("envelope is truncated", code="CRYPTO_ENVELOPE_INVALID")
    magic, fmt, kek_version, wrapped_len = _ENVELOPE_HEADER.unpack_from(envelope)
    if magic != _ENVELOPE_MAGIC or fmt != _ENVELOPE_FORMAT:
        raise CryptoError("not a cmohub envelope (format 1)", code="CRYPTO_ENVELOPE_INVALID")
    start = _ENVELOPE_HEADER.size
    end = start + wrapped_len
    if len(envelope) < end + NONCE_BYTES + TAG_BYTES:
        raise CryptoError("envelope is truncated", code="CRYPTO_ENVELOPE_INVALID")
    return kek_version, envelope[start:end], envelope[end:]


def envelope_kek_version(envelope: bytes) -> int:
    """The version of the KEK that wraps this envelope's data key."""
    return _split_envelope(envelope)[0]


def _kek(kek_for: Callable[[int], bytes], version: int) -> bytes:
    try:
        return kek_for(version)
    except KeyError:
        raise CryptoError(
            f"no key-encryption key version {version} is available", code="CRYPTO_KEK_UNKNOWN"
        ) from None


def decrypt_envelope(
    envelope: bytes, *, kek_for: Callable[[int], bytes], aad: bytes = b""
) -> bytes:
    """The plaintext of an envelope; ``kek_for(version)`` returns the KEK (KeyError if none)."""
    kek_version, wrapped, body = _split_envelope(envelope)
    data_key = unwrap_key(_kek(kek_for, kek_version), wrapped, context=_ENVELOPE_WRAP)
    return DataKey(data_key).open(body, _ENVELOPE_AAD + aad)


def rewrap_envelope(
    envelope: bytes, *, kek_for: Callable[[int], bytes], new_kek: bytes, new_kek_version: int
) -> bytes:
    """The same envelope with its data key wrapped by ``new_kek``; the ciphertext is unchanged."""
    kek_version, wrapped, body = _split_envelope(envelope)
    data_key = unwrap_key(_kek(kek_for, kek_version), wrapped, context=_ENVELOPE_WRAP)
    rewrapped = wrap_key(new_kek, data_key, context=_ENVELOPE_WRAP)
    header = _ENVELOPE_HEADER.pack(
        _ENVELOPE_MAGIC, _ENVELOPE_FORMAT, new_kek_version, len(rewrapped)
    )
    return header + rewrapped + body
