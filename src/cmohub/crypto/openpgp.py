"""OpenPGP for CMO exchange and publishing: verify before use, sign and encrypt outgoing files.

This is the only module that imports pgpy (0.6, unmaintained). pgpy checks neither key expiry
at signing time nor revocation, and accepts any cipher it knows; this module does those checks
itself, the same way for both backends behind :class:`Backend`:

* :class:`PgpyBackend` — in memory, pure Python; used below ``Policy.stream_threshold``;
* :class:`cmohub.crypto.gnupg.GnupgBackend` — streams through ``gpg`` (files on disk, constant
  memory); used above the threshold when ``gpg`` is installed.

Incoming (:func:`verify_decrypt`): the message must be encrypted to our key, integrity protected
(SEIPD with MDC), with AES-256 as its session cipher, no larger than ``Policy.max_bytes`` (file
and plaintext), and signed by the sender's pinned key — primary key or one of its signing
subkeys — with an accepted hash, by a key that was neither expired nor revoked when it signed
and is not revoked now. Nothing of the plaintext is returned (or left on disk) unless every check
passed. Outgoing (:func:`sign_encrypt`, :func:`encrypt_to`): signed with SHA-512, encrypted with
AES-256 named explicitly, compressed (ZLIB) only when the payload is not already compressed.
Detached signatures for published manifests: :func:`sign_detached`, :func:`verify_detached`.

Error codes (:class:`cmohub.errors.CryptoError`; messages never hold plaintext or key material):

=========================== ==================================================================
CRYPTO_MALFORMED            not an OpenPGP message (or not a key, for key files)
CRYPTO_TRUNCATED            the file ends before the packets it announces
CRYPTO_TOO_LARGE            file or plaintext larger than ``Policy.max_bytes``
CRYPTO_NOT_ENCRYPTED        signed or literal data only: CMO files must be encrypted
CRYPTO_NO_INTEGRITY         encrypted without modification detection (packet tag 9)
CRYPTO_UNSUPPORTED          AEAD (SEIPD v2) or another packet version we do not read
CRYPTO_WRONG_RECIPIENT      not encrypted to our key
CRYPTO_TAMPERED             ciphertext or session key altered (MDC or decryption failure)
CRYPTO_WEAK_ALGORITHM       session cipher other than AES-256, weak hash, short or weak key
CRYPTO_UNSIGNED             encrypted but not signed
CRYPTO_SIGNER_NOT_PINNED    signed, but not by the feed's pinned key
CRYPTO_BAD_SIGNATURE        the signature does not match the content
CRYPTO_KEY_EXPIRED          the signing key had expired when the signature was made
CRYPTO_KEY_REVOKED          the signing key (or subkey) is revoked
CRYPTO_SIGNATURE_TIME       the signature claims a time before its key existed or in the future
CRYPTO_KEY_INVALID          a key file is unusable (no valid self-signature, wrong kind, ...)
CRYPTO_PIN_MISMATCH         a key file's fingerprint is not the pinned fingerprint
CRYPTO_PASSPHRASE           the passphrase does not unlock the secret key
CRYPTO_BACKEND_UNAVAILABLE  the GnuPG backend was asked for but ``gpg`` is not installed
CRYPTO_BACKEND_FAILED       ``gpg`` failed in a way that says nothing about the message
=========================== ==================================================================
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import os
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol

from cmohub.crypto.packets import (
    TAG_COMPRESSED,
    WILDCARD_KEYID,
    MessageShape,
    ShapeError,
    dearmor,
    definite_lengths,
    first_packet,
    scan_bytes,
    scan_message,
)
from cmohub.errors import CryptoError, unreadable_as
from cmohub.sensitive import Sensitive


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pgpy's own warnings (its TODOs, cryptography's decrepit-algorithm notices).

    The checks pgpy skips are done here; the algorithms cryptography warns about (TripleDES,
    Camellia) are never accepted; CFB is OpenPGP's mode, not a choice.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


with _quiet():
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from pgpy import PGPUID, PGPKey, PGPMessage, PGPSignature
    from pgpy.constants import (
        CompressionAlgorithm,
        EllipticCurveOID,
        HashAlgorithm,
        KeyFlags,
        PubKeyAlgorithm,
        RevocationReason,
        SignatureType,
        SymmetricKeyAlgorithm,
    )
    from pgpy.errors import PGPDecryptionError, PGPError

log = logging.getLogger(__name__)

MiB = 1 << 20


# --- errors ---------------------------------------------------------------------------------------


class OpenPgpError(CryptoError):
    code: ClassVar[str] = "CRYPTO_OPENPGP"


def _error(code: str, message: str, where: str | None = None) -> OpenPgpError:
    return OpenPgpError(message, code=code, where=where)


#: Every code a rejected message or key can get, in the order the checks run.
REJECTION_CODES = (
    "CRYPTO_MALFORMED",
    "CRYPTO_TRUNCATED",
    "CRYPTO_TOO_LARGE",
    "CRYPTO_NOT_ENCRYPTED",
    "CRYPTO_NO_INTEGRITY",
    "CRYPTO_UNSUPPORTED",
    "CRYPTO_WRONG_RECIPIENT",
    "CRYPTO_TAMPERED",
    "CRYPTO_WEAK_ALGORITHM",
    "CRYPTO_UNSIGNED",
    "CRYPTO_SIGNER_NOT_PINNED",
    "CRYPTO_BAD_SIGNATURE",
    "CRYPTO_KEY_EXPIRED",
    "CRYPTO_KEY_REVOKED",
    "CRYPTO_SIGNATURE_TIME",
)


# --- policy ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """What an acceptable message and key look like (DESIGN.md, exchange with CMOs)."""

    max_bytes: int = 256 * MiB  # the file as delivered and its plaintext
    min_rsa_bits: int = 3072
    hashes: frozenset[str] = frozenset({"SHA256", "SHA384", "SHA512"})
    cipher: str = "AES256"  # the only session cipher accepted and used
    clock_skew: timedelta = timedelta(minutes=15)  # signature times this far ahead are accepted
    stream_threshold: int = 8 * MiB  # larger files go through GnuPG (streaming) when available

    def with_max_bytes(self, max_bytes: int | None) -> Policy:
        return self if max_bytes is None else replace(self, max_bytes=max_bytes)


DEFAULT_POLICY = Policy()
_SAFE_CURVES = {"Ed25519", "Curve25519", "NIST_P256", "NIST_P384", "NIST_P521"}


# --- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyPart:
    """The primary key or one subkey, with its validity as its self-signatures state it."""

    fingerprint: str
    key_id: str
    primary: bool
    algorithm: str  # RSA, DSA, ElGamal, ECDSA, EdDSA, ECDH
    bits: int | None
    curve: str | None
    created: datetime
    expires: datetime | None
    revoked_at: datetime | None
    revocation_reason: str | None
    can_sign: bool
    can_encrypt: bool

    def describe(self) -> str:
        size = f"-{self.bits}" if self.bits else f" {self.curve}" if self.curve else ""
        return f"{self.algorithm}{size}"

    def weakness(self, policy: Policy) -> str | None:
        """Why the key is too weak under ``policy``, or None."""
        if self.algorithm in ("DSA", "ElGamal"):
            return f"{self.algorithm} keys are not accepted"
        if self.algorithm == "RSA" and (self.bits or 0) < policy.min_rsa_bits:
            return f"RSA key of {self.bits} bits (at least {policy.min_rsa_bits} required)"
        if self.curve is not None and self.curve not in _SAFE_CURVES:
            return f"curve {self.curve} is not accepted"
        return None

    def valid_at(self, when: datetime) -> bool:
        return self.created <= when and (self.expires is None or when < self.expires)


def normalize_fingerprint(text: str) -> str:
    """A v4 fingerprint as 40 upper-case hex digits (spaces and ``0x`` allowed on input)."""
    cleaned = text.replace(" ", "").removeprefix("0x").upper()
    if len(cleaned) != 40 or any(c not in "0123456789ABCDEF" for c in cleaned):
        raise _error("CRYPTO_KEY_INVALID", "a fingerprint is 40 hexadecimal digits")
    return cleaned


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_ALGORITHMS = {
    PubKeyAlgorithm.RSAEncryptOrSign: "RSA",
    PubKeyAlgorithm.RSAEncrypt: "RSA",
    PubKeyAlgorithm.RSASign: "RSA",
    PubKeyAlgorithm.DSA: "DSA",
    PubKeyAlgorithm.ElGamal: "ElGamal",
    PubKeyAlgorithm.ECDSA: "ECDSA",
    PubKeyAlgorithm.EdDSA: "EdDSA",
    PubKeyAlgorithm.ECDH: "ECDH",
}


def _verify_raw(signer: Any, sig: Any, subject: Any) -> bool:
    """Check one signature cryptographically, without pgpy's wall-clock expiry checks."""
    try:
        hasher = getattr(hashes, sig.hash_algorithm.name)()
        with _quiet():
            result = signer._key.verify(sig.hashdata(subject), sig.__sig__, hasher)
    except (InvalidSignature, PGPError, ValueError, TypeError, AttributeError, NotImplementedError):
        return False
    return result is True


def _flags(sig: Any) -> set[Any]:
    with _quiet():
        return set(sig.key_flags) if sig is not None else set()


def _describe_key(key: Any) -> tuple[KeyPart, ...]:
    """The key's parts with validity from verified self-signatures (pgpy verifies none)."""
    primary = key if key.is_primary else key.parent
    with _quiet():
        primary_id = primary.fingerprint.keyid
        self_sigs: list[tuple[Any, Any]] = []
        for uid in primary.userids:
            for sig in uid._signatures:
                if sig.signer == primary_id and sig.type in (
                    SignatureType.Positive_Cert,
                    SignatureType.Generic_Cert,
                    SignatureType.Casual_Cert,
                    SignatureType.Persona_Cert,
                ):
                    self_sigs.append((sig, uid))
        for sig in primary._signatures:
            if sig.signer == primary_id and sig.type == SignatureType.DirectlyOnKey:
                self_sigs.append((sig, primary))
    valid = sorted(
        (sig for sig, subject in self_sigs if _verify_raw(primary, sig, subject)),
        key=lambda s: s.created,
    )
    if not valid:
        raise _error("CRYPTO_KEY_INVALID", "the key has no valid self-signature")
    newest = valid[-1]
    created = _aware(primary.created)
    expiration = next((s.key_expiration for s in reversed(valid) if s.key_expiration), None)
    primary_flags = _flags(newest)
    parts = [
        _part(
            primary,
            primary=True,
            created=created,
            expires=created + expiration if expiration else None,
            revocation=_revocation(primary, primary, SignatureType.KeyRevocation),
            flags=primary_flags or {KeyFlags.Sign, KeyFlags.Certify},
        )
    ]
    for subkey in primary.subkeys.values():
        bindings = sorted(
            (
                sig
                for sig in subkey._signatures
                if sig.type == SignatureType.Subkey_Binding
                and sig.signer == primary_id
                and _verify_raw(primary, sig, subkey)
            ),
            key=lambda s: s.created,
        )
        if not bindings:
            continue  # an unbound subkey is not part of the key
        sub_created = _aware(subkey.created)
        sub_expiration = bindings[-1].key_expiration
        sub_expires = sub_created + sub_expiration if sub_expiration else None
        if parts[0].expires is not None:
            sub_expires = min(filter(None, (sub_expires, parts[0].expires)))
        parts.append(
            _part(
                subkey,
                primary=False,
                created=sub_created,
                expires=sub_expires,
                revocation=_revocation(primary, subkey, SignatureType.SubkeyRevocation),
                flags=_flags(bindings[-1]),
            )
        )
    return tuple(parts)


def _revocation(primary: Any, target: Any, kind: Any) -> tuple[datetime, str] | None:
    """The earliest revocation of ``target`` made by the primary key, if a valid one exists."""
    found: list[tuple[datetime, str]] = []
    for sig in target._signatures:
        if sig.type == kind and sig.signer == primary.fingerprint.keyid:
            if not _verify_raw(primary, sig, target):
                log.warning("ignoring a revocation signature that does not verify")
                continue
            with _quiet():
                reason = sig.revocation_reason
            code = getattr(reason, "code", None)
            found.append((_aware(sig.created), getattr(code, "name", "NotSpecified")))
    return min(found) if found else None


def _part(
    key: Any,
    *,
    primary: bool,
    created: datetime,
    expires: datetime | None,
    revocation: tuple[datetime, str] | None,
    flags: set[Any],
) -> KeyPart:
    algorithm = _ALGORITHMS.get(key.key_algorithm, str(key.key_algorithm))
    size = key.key_size
    curve = None
    bits = None
    if isinstance(size, EllipticCurveOID):
        curve = size.name
    elif isinstance(size, int):
        bits = size
    return KeyPart(
        fingerprint=str(key.fingerprint).replace(" ", ""),
        key_id=str(key.fingerprint.keyid),
        primary=primary,
        algorithm=algorithm,
        bits=bits,
        curve=curve,
        created=created,
        expires=expires,
        revoked_at=revocation[0] if revocation else None,
        revocation_reason=revocation[1] if revocation else None,
        can_sign=KeyFlags.Sign in flags,
        can_encrypt=bool({KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage} & flags),
    )


def _parse_key(data: bytes, where: str | None) -> Any:
    try:
        with _quiet():
            loaded = PGPKey.from_blob(data)
    except (PGPError, ValueError, TypeError, KeyError, IndexError, NotImplementedError):
        raise _error("CRYPTO_KEY_INVALID", "not an OpenPGP key", where) from None
    key = loaded[0] if isinstance(loaded, tuple) else loaded
    if key is None or key._key is None:
        raise _error("CRYPTO_KEY_INVALID", "not an OpenPGP key", where)
    return key


class PublicKey:
    """A correspondent's public key (a CMO's, or a recipient's), parsed and self-checked."""

    def __init__(self, armored: bytes, *, where: str | None = None) -> None:
        key = _parse_key(armored, where)
        if not key.is_public:
            with _quiet():
                key = key.pubkey
        self._key = key
        self.parts = _describe_key(key)
        self.fingerprint = self.parts[0].fingerprint
        with _quiet():
            self.user_ids = tuple(str(uid.userid) for uid in key.userids)
            self._armored = str(key).encode()

    def __repr__(self) -> str:
        return f"PublicKey({self.fingerprint})"

    @property
    def primary(self) -> KeyPart:
        return self.parts[0]

    @property
    def armored(self) -> bytes:
        return self._armored

    @property
    def revoked(self) -> bool:
        return self.primary.revoked_at is not None

    def part(self, key_id_or_fingerprint: str) -> KeyPart | None:
        """The primary key or subkey with this key ID (16 hex) or fingerprint (40 hex)."""
        wanted = key_id_or_fingerprint.replace(" ", "").upper()
        for part in self.parts:
            if wanted in (part.fingerprint, part.key_id):
                return part
        return None

    def pinned(self, fingerprint: str) -> PublicKey:
        """This key, after checking it is the one pinned (full fingerprint)."""
        if normalize_fingerprint(fingerprint) != self.fingerprint:
            raise _error(
                "CRYPTO_PIN_MISMATCH",
                f"the key file holds {self.fingerprint}, not the pinned fingerprint",
            )
        return self

    def encryption_part(self, policy: Policy, now: datetime) -> KeyPart:
        """The subkey (or primary) a message to this key is encrypted to."""
        usable = [
            p for p in self.parts if p.can_encrypt and p.revoked_at is None and p.valid_at(now)
        ]
        if self.revoked:
            raise _error("CRYPTO_KEY_REVOKED", f"recipient key {self.fingerprint} is revoked")
        if not usable:
            raise _error(
                "CRYPTO_KEY_INVALID", f"key {self.fingerprint} has no valid encryption key"
            )
        part = usable[-1]
        weak = part.weakness(policy)
        if weak:
            raise _error("CRYPTO_WEAK_ALGORITHM", f"recipient key: {weak}")
        return part


class SecretKey:
    """Our own key pair (the sponsor's, or a sandbox CMO's), unlocked once and kept unlocked.

    Unlocking runs the passphrase's S2K and rebuilds each private key (about 85 ms for
    RSA-3072); both are done once per process and key, not once per message.
    """

    def __init__(
        self,
        armored: bytes,
        *,
        passphrase: Sensitive[str] | None = None,
        where: str | None = None,
    ) -> None:
        key = _parse_key(armored, where)
        if key.is_public:
            raise _error(
                "CRYPTO_KEY_INVALID", "a public key was given where a secret key is needed"
            )
        self._armored = armored
        self._passphrase = passphrase
        with _quiet():
            public_armored = str(key.pubkey).encode()
        self.public = PublicKey(public_armored, where=where)
        self.fingerprint = self.public.fingerprint
        self._key = key
        self._lock = threading.Lock()
        self._unlocked = False
        if key.is_protected and passphrase is None:
            raise _error("CRYPTO_PASSPHRASE", "the secret key is protected: a passphrase is needed")

    def __repr__(self) -> str:
        return f"SecretKey({self.fingerprint})"

    @property
    def armored(self) -> bytes:
        return self._armored

    @property
    def passphrase(self) -> Sensitive[str] | None:
        return self._passphrase

    @property
    def protected(self) -> bool:
        return bool(self._key.is_protected)

    def unlocked(self) -> Any:
        """The pgpy key with every private key built and cached (adapter-internal)."""
        with self._lock:
            if not self._unlocked:
                keys = [self._key, *self._key.subkeys.values()]
                if self._key.is_protected:
                    assert self._passphrase is not None
                    secret = self._passphrase.reveal()
                    try:
                        with _quiet():
                            for part in keys:
                                part._key.unprotect(secret)
                    except (PGPDecryptionError, PGPError, ValueError):
                        raise _error(
                            "CRYPTO_PASSPHRASE", "the passphrase does not unlock the secret key"
                        ) from None
                for part in keys:
                    material = part._key.keymaterial
                    with _quiet():
                        built = material.__privkey__()
                    material.__privkey__ = lambda built=built: built
                self._unlocked = True
            return self._key


def load_public_key(path: Path, *, pinned: str | None = None) -> PublicKey:
    """A public key from an armored or binary key file; checked against ``pinned`` if given."""
    key = PublicKey(_read_key_file(path), where=str(path))
    return key.pinned(pinned) if pinned is not None else key


def load_secret_key(path: Path, *, passphrase: Sensitive[str] | None = None) -> SecretKey:
    return SecretKey(_read_key_file(path), passphrase=passphrase, where=str(path))


def _read_key_file(path: Path) -> bytes:
    with unreadable_as(OpenPgpError, "the key file", code="CRYPTO_KEY_INVALID", where=path):
        return path.read_bytes()


def generate_key(
    name: str,
    email: str,
    *,
    passphrase: Sensitive[str] | None = None,
    bits: int = 3072,
    created: datetime | None = None,
    expires_after: timedelta | None = None,
) -> SecretKey:
    """A new RSA key pair: a signing primary key and an encryption subkey (GnuPG's layout).

    Preferences name AES-256 as the only cipher, SHA-512/384/256 and ZLIB, ZIP or no
    compression, so GnuPG encrypting to this key picks AES-256 without being told.
    """
    with _quiet():
        primary = PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, bits, created=created)
        uid = PGPUID.new(name, email=email)
        common: dict[str, Any] = {
            "hashes": [HashAlgorithm.SHA512, HashAlgorithm.SHA384, HashAlgorithm.SHA256],
            "ciphers": [SymmetricKeyAlgorithm.AES256],
            "compression": [
                CompressionAlgorithm.ZLIB,
                CompressionAlgorithm.ZIP,
                CompressionAlgorithm.Uncompressed,
            ],
        }
        if created is not None:
            common["created"] = created
        if expires_after is not None:
            common["key_expiration"] = expires_after
        primary.add_uid(uid, usage={KeyFlags.Sign, KeyFlags.Certify}, **common)
        sub = PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, bits, created=created)
        binding: dict[str, Any] = {
            "usage": {KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage}
        }
        if created is not None:
            binding["created"] = created
        if expires_after is not None:
            binding["key_expiration"] = expires_after
        primary.add_subkey(sub, **binding)
        if passphrase is not None:
            primary.protect(passphrase.reveal(), SymmetricKeyAlgorithm.AES256, HashAlgorithm.SHA256)
        armored = str(primary).encode()
    return SecretKey(armored, passphrase=passphrase)


class RevocationKind(StrEnum):
    COMPROMISED = "compromised"
    SUPERSEDED = "superseded"
    RETIRED = "retired"
    UNSPECIFIED = "unspecified"


_REASONS = {
    RevocationKind.COMPROMISED: RevocationReason.Compromised,
    RevocationKind.SUPERSEDED: RevocationReason.Superseded,
    RevocationKind.RETIRED: RevocationReason.Retired,
    RevocationKind.UNSPECIFIED: RevocationReason.NotSpecified,
}


def revoke_key(
    secret: SecretKey,
    *,
    reason: RevocationKind = RevocationKind.COMPROMISED,
    created: datetime | None = None,
) -> PublicKey:
    """The public key with a revocation of its primary key (what a CMO sends when it revokes)."""
    key = secret.unlocked()
    with _quiet():
        signature = key.revoke(key, reason=_REASONS[reason], created=created)
        public = PGPKey.from_blob(str(secret.public._key).encode())[0]
        public |= signature
        armored = str(public).encode()
    return PublicKey(armored)


def export_secret(secret: SecretKey) -> bytes:
    """The secret key as it was loaded (still protected when it was)."""
    return secret.armored


# --- message helpers ------------------------------------------------------------------------------

_COMPRESSED_MAGIC = (
    b"PAR1",  # Parquet
    b"\x1f\x8b",  # gzip
    b"PK\x03\x04",  # zip, xlsx, docx
    b"\x28\xb5\x2f\xfd",  # zstd
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"\x89PNG",
    b"%PDF",  # usually deflate-compressed streams
)


def should_compress(head: bytes) -> bool:
    """False for payloads that are already compressed (compressing them again only costs time)."""
    if head.startswith(_COMPRESSED_MAGIC):
        return False
    sample = head[: 64 * 1024]
    if len(sample) < 512:
        return True
    return len(zlib.compress(sample, 1)) < 0.9 * len(sample)


def _decompress(algorithm: int, data: bytes, limit: int) -> bytes:
    """Decompress a Compressed Data packet's body without ever producing more than ``limit``."""
    if algorithm == 0:
        out = data
    elif algorithm in (1, 2):
        decompressor = zlib.decompressobj(-15 if algorithm == 1 else 15)
        try:
            out = decompressor.decompress(data, limit + 1)
        except zlib.error:
            raise _error("CRYPTO_MALFORMED", "the compressed data is corrupt") from None
    elif algorithm == 3:
        bzip = bz2.BZ2Decompressor()
        try:
            out = bzip.decompress(data, limit + 1)
        except (OSError, EOFError):
            raise _error("CRYPTO_MALFORMED", "the compressed data is corrupt") from None
    else:
        raise _error("CRYPTO_UNSUPPORTED", f"compression algorithm {algorithm}")
    check_plaintext_size(len(out), limit)
    return out


def hash_name(algorithm_id: int) -> str:
    try:
        return str(HashAlgorithm(algorithm_id).name)
    except ValueError:
        return f"hash-{algorithm_id}"


def cipher_name(algorithm_id: int) -> str:
    try:
        return str(SymmetricKeyAlgorithm(algorithm_id).name)
    except ValueError:
        return f"cipher-{algorithm_id}"


# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureInfo:
    """Who signed, with which (sub)key, when: the facts a verified signature establishes."""

    signer: str  # the pinned primary fingerprint
    signing_key: str  # fingerprint of the primary key or subkey that made the signature
    signed_at: datetime
    hash_algorithm: str


@dataclass(frozen=True)
class Verified:
    """A verified and decrypted message. ``data`` in memory, or ``path`` when written to a file."""

    signature: SignatureInfo
    size: int
    sha256: str
    file_name: str  # as the sender's literal data packet names it (may be empty)
    backend: str
    data: bytes | None = field(default=None, repr=False)
    path: Path | None = None

    @property
    def signer(self) -> str:
        return self.signature.signer


def check_signature(
    sender: PublicKey,
    *,
    key_id: str,
    created: datetime,
    hash_algorithm: str,
    policy: Policy,
    now: datetime,
) -> KeyPart:
    """Apply the policy to a cryptographically valid signature (the same for every backend).

    ``key_id`` is the issuer's key ID or fingerprint. Raises with the code of the first
    failed check; returns the key part that signed.
    """
    part = sender.part(key_id)
    if part is None:
        raise signer_not_pinned()
    if not part.can_sign:
        raise _error("CRYPTO_SIGNER_NOT_PINNED", "the signing key is not certified for signing")
    if hash_algorithm not in policy.hashes:
        raise _error("CRYPTO_WEAK_ALGORITHM", f"signature hash {hash_algorithm} is not accepted")
    for checked in (sender.primary, part):
        weak = checked.weakness(policy)
        if weak:
            raise _error("CRYPTO_WEAK_ALGORITHM", f"signing key: {weak}")
        if checked.revoked_at is not None:
            raise _error(
                "CRYPTO_KEY_REVOKED",
                f"the signing key was revoked on {checked.revoked_at:%Y-%m-%d} "
                f"({checked.revocation_reason})",
            )
    created = _aware(created)
    if created > now + policy.clock_skew:
        raise _error("CRYPTO_SIGNATURE_TIME", "the signature is dated in the future")
    if created < part.created or created < sender.primary.created:
        raise _error("CRYPTO_SIGNATURE_TIME", "the signature is older than its key")
    for checked in (sender.primary, part):
        if checked.expires is not None and created >= checked.expires:
            raise _error(
                "CRYPTO_KEY_EXPIRED",
                f"the signing key expired on {checked.expires:%Y-%m-%d}, before the signature",
            )
    return part


def signer_not_pinned() -> OpenPgpError:
    """A signature by a key other than the pinned one (the same verdict from every backend)."""
    return _error(
        "CRYPTO_SIGNER_NOT_PINNED", "the message is signed by a key other than the pinned one"
    )


def _size(source: bytes | Path) -> int:
    return len(source) if isinstance(source, bytes) else source.stat().st_size


def check_size(source: bytes | Path, limit: int) -> None:
    """Refuse a message or file larger than ``limit`` bytes before reading it (both backends)."""
    if _size(source) > limit:
        raise _error("CRYPTO_TOO_LARGE", f"the file exceeds the limit of {limit} bytes")


def check_plaintext_size(size: int, limit: int) -> None:
    """Refuse a decrypted plaintext larger than ``limit`` bytes (both backends)."""
    if size > limit:
        raise _error("CRYPTO_TOO_LARGE", f"the plaintext exceeds the limit of {limit} bytes")


def precheck(shape: MessageShape, recipient: SecretKey) -> None:
    """Checks on the outer packets, before any decryption (both backends)."""
    if shape.integrity == "none":
        raise _error(
            "CRYPTO_NO_INTEGRITY", "the message is encrypted without integrity protection (MDC)"
        )
    if shape.integrity == "aead":
        raise _error("CRYPTO_UNSUPPORTED", "AEAD-encrypted messages (SEIPD v2) are not read")
    ours = {p.key_id for p in recipient.public.parts}
    if not (ours & set(shape.recipients)) and WILDCARD_KEYID not in shape.recipients:
        raise _error("CRYPTO_WRONG_RECIPIENT", "the message is not encrypted to our key")


def _shape_error(error: ShapeError) -> OpenPgpError:
    return _error(error.code, error.message)


# --- backends -------------------------------------------------------------------------------------


class Backend(Protocol):
    """One OpenPGP implementation behind the hub's checks (see the module docstring)."""

    name: str

    def verify_decrypt(
        self,
        message: bytes | Path,
        *,
        sender: PublicKey,
        recipient: SecretKey,
        policy: Policy,
        now: datetime,
        out: Path | None = None,
    ) -> Verified: ...

    def sign_encrypt(
        self,
        data: bytes | Path,
        *,
        signer: SecretKey,
        recipients: Sequence[PublicKey],
        policy: Policy,
        now: datetime,
        compress: bool | None = None,
        file_name: str = "",
        out: Path | None = None,
    ) -> bytes | None: ...

    def sign_detached(self, data: bytes | Path, *, signer: SecretKey, now: datetime) -> bytes: ...

    def verify_detached(
        self,
        data: bytes | Path,
        signature: bytes,
        *,
        sender: PublicKey,
        policy: Policy,
        now: datetime,
    ) -> SignatureInfo: ...


def _read(source: bytes | Path, limit: int) -> bytes:
    check_size(source, limit)
    return source if isinstance(source, bytes) else source.read_bytes()


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (the folder must exist)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


class PgpyBackend:
    """pgpy, in memory: quick for the small files CMOs deliver (no process, no key import)."""

    name = "pgpy"

    def verify_decrypt(
        self,
        message: bytes | Path,
        *,
        sender: PublicKey,
        recipient: SecretKey,
        policy: Policy,
        now: datetime,
        out: Path | None = None,
    ) -> Verified:
        data = _read(message, policy.max_bytes)
        try:
            shape = scan_bytes(data)
        except ShapeError as error:
            raise _shape_error(error) from None
        precheck(shape, recipient)
        key = recipient.unlocked()
        try:
            binary = definite_lengths(dearmor(data))
            del data
            with _quiet():
                parsed = PGPMessage.from_blob(binary)
            del binary
        except ShapeError as error:
            raise _shape_error(error) from None
        except (PGPError, ValueError, TypeError, KeyError, IndexError, NotImplementedError):
            raise _error("CRYPTO_MALFORMED", "the message cannot be parsed") from None
        plaintext = self._decrypt(parsed, key, policy)
        del parsed
        literal, signatures, file_name = self._open(plaintext, policy)
        del plaintext
        info = self._verify(literal, signatures, sender, policy, now)
        digest = hashlib.sha256(literal).hexdigest()
        size = len(literal)
        if out is not None:
            write_private(out, literal)
            return Verified(info, size, digest, file_name, self.name, None, out)
        return Verified(info, size, digest, file_name, self.name, literal, None)

    @staticmethod
    def _decrypt(parsed: Any, key: Any, policy: Policy) -> bytes:
        candidates = {key.fingerprint.keyid: key, **dict(key.subkeys.items())}
        chosen = [
            (session, candidates[session.encrypter])
            for session in parsed._sessionkeys
            if getattr(session, "encrypter", None) in candidates
        ] or [
            (session, part)
            for session in parsed._sessionkeys
            if getattr(session, "encrypter", None) == WILDCARD_KEYID
            for part in candidates.values()
        ]
        if not chosen:
            raise _error("CRYPTO_WRONG_RECIPIENT", "the message is not encrypted to our key")
        for session, part in chosen:
            try:
                with _quiet():
                    algorithm, session_key = session.decrypt_sk(part._key)
            except (PGPDecryptionError, PGPError, ValueError, TypeError, NotImplementedError):
                continue
            if algorithm.name != policy.cipher:
                raise _error(
                    "CRYPTO_WEAK_ALGORITHM",
                    f"session cipher {algorithm.name}; only {policy.cipher} is accepted",
                )
            try:
                with _quiet():
                    packets = parsed.message.decrypt(session_key, algorithm)
            except (PGPDecryptionError, PGPError, ValueError):
                raise _error(
                    "CRYPTO_TAMPERED", "the ciphertext fails its integrity check (MDC)"
                ) from None
            return bytes(packets[:-22])  # the MDC packet was checked; drop it
        raise _error("CRYPTO_TAMPERED", "the session key cannot be decrypted with our key")

    @staticmethod
    def _open(plaintext: bytes, policy: Policy) -> tuple[bytes, list[Any], str]:
        try:
            tag, body, rest = first_packet(plaintext)
            if tag == TAG_COMPRESSED:
                if rest:
                    raise _error("CRYPTO_MALFORMED", "data follows the compressed packet")
                plaintext = _decompress(body[0], body[1:], policy.max_bytes + 64 * 1024)
            packets = definite_lengths(plaintext)
            del plaintext
            with _quiet():
                inner = PGPMessage()
                inner.parse(packets)
        except ShapeError as error:
            raise _error("CRYPTO_MALFORMED", error.message) from None
        except (PGPError, ValueError, TypeError, KeyError, IndexError, NotImplementedError):
            raise _error("CRYPTO_MALFORMED", "the decrypted message cannot be parsed") from None
        if inner.type != "literal":
            raise _error("CRYPTO_MALFORMED", "the decrypted message holds no literal data")
        literal = bytes(inner.message)
        check_plaintext_size(len(literal), policy.max_bytes)
        return literal, list(inner.signatures), str(inner.filename or "")

    @staticmethod
    def _verify(
        literal: bytes, signatures: list[Any], sender: PublicKey, policy: Policy, now: datetime
    ) -> SignatureInfo:
        if not signatures:
            raise _error("CRYPTO_UNSIGNED", "the message is encrypted but not signed")
        return _verify_signatures(literal, signatures, sender, policy, now)

    def sign_encrypt(
        self,
        data: bytes | Path,
        *,
        signer: SecretKey,
        recipients: Sequence[PublicKey],
        policy: Policy,
        now: datetime,
        compress: bool | None = None,
        file_name: str = "",
        out: Path | None = None,
    ) -> bytes | None:
        payload = _read(data, policy.max_bytes)
        for recipient in recipients:
            recipient.encryption_part(policy, now)
        key = signer.unlocked()
        compress = should_compress(payload[: 64 * 1024]) if compress is None else compress
        with _quiet():
            message = PGPMessage.new(
                payload,
                format="b",
                compression=CompressionAlgorithm.ZLIB
                if compress
                else CompressionAlgorithm.Uncompressed,
            )
            message._message.filename = file_name
            message._message.update_hlen()
            message |= key.sign(message, hash=HashAlgorithm.SHA512, created=now)
            cipher = SymmetricKeyAlgorithm[policy.cipher]
            session_key = cipher.gen_key()
            encrypted = message
            for recipient in recipients:
                encrypted = recipient._key.encrypt(encrypted, cipher=cipher, sessionkey=session_key)
            blob = bytes(encrypted)
        if out is not None:
            write_private(out, blob)
            return None
        return blob

    def sign_detached(self, data: bytes | Path, *, signer: SecretKey, now: datetime) -> bytes:
        payload = data if isinstance(data, bytes) else data.read_bytes()
        key = signer.unlocked()
        with _quiet():
            signature = key.sign(payload, hash=HashAlgorithm.SHA512, created=now)
            return str(signature).encode()

    def verify_detached(
        self,
        data: bytes | Path,
        signature: bytes,
        *,
        sender: PublicKey,
        policy: Policy,
        now: datetime,
    ) -> SignatureInfo:
        payload = _read(data, policy.max_bytes)
        try:
            with _quiet():
                parsed = PGPSignature.from_blob(signature)
        except (PGPError, ValueError, TypeError, KeyError, IndexError, NotImplementedError):
            raise _error("CRYPTO_MALFORMED", "not an OpenPGP signature") from None
        if isinstance(parsed, tuple):
            parsed = parsed[0]
        return _verify_signatures(payload, [parsed], sender, policy, now)


def _verify_signatures(
    content: bytes, signatures: list[Any], sender: PublicKey, policy: Policy, now: datetime
) -> SignatureInfo:
    """The first signature by the pinned key, checked; other signers are ignored."""
    problem: OpenPgpError | None = None
    for sig in signatures:
        with _quiet():
            issuer = str(sig.signer_fingerprint or "").replace(" ", "") or str(sig.signer or "")
        part = sender.part(issuer) if issuer else None
        if part is None:
            problem = problem or signer_not_pinned()
            continue
        signer = sender._key
        if not part.primary:
            signer = sender._key.subkeys[part.key_id]
        if not _verify_raw(signer, sig, content):
            raise _error("CRYPTO_BAD_SIGNATURE", "the signature does not match the content")
        with _quiet():
            algorithm = sig.hash_algorithm.name
            created = sig.created
        check_signature(
            sender,
            key_id=part.fingerprint,
            created=created,
            hash_algorithm=algorithm,
            policy=policy,
            now=now,
        )
        return SignatureInfo(sender.fingerprint, part.fingerprint, _aware(created), algorithm)
    assert problem is not None
    raise problem


# --- choosing a backend ---------------------------------------------------------------------------

_backends: dict[str, Backend] = {}
_backends_lock = threading.Lock()


def pgpy_backend() -> Backend:
    with _backends_lock:
        return _backends.setdefault("pgpy", PgpyBackend())


def gnupg_backend() -> Backend:
    """The shared GnuPG backend (raises CRYPTO_BACKEND_UNAVAILABLE without ``gpg``)."""
    from cmohub.crypto.gnupg import GnupgBackend  # noqa: PLC0415 - avoids an import cycle

    with _backends_lock:
        backend = _backends.get("gnupg")
        if backend is None:
            backend = _backends["gnupg"] = GnupgBackend()
        return backend


def gnupg_available() -> bool:
    from cmohub.crypto.gnupg import gpg_binary  # noqa: PLC0415 - avoids an import cycle

    return gpg_binary() is not None


def choose_backend(size: int, policy: Policy = DEFAULT_POLICY) -> Backend:
    """pgpy below ``policy.stream_threshold``; GnuPG above it when ``gpg`` is installed."""
    if size > policy.stream_threshold and gnupg_available():
        return gnupg_backend()
    return pgpy_backend()


def check_signer(signer: SecretKey, now: datetime, policy: Policy = DEFAULT_POLICY) -> None:
    """Refuse to sign with our own key when it is revoked, expired or too weak."""
    primary = signer.public.primary
    weak = primary.weakness(policy)
    if weak:
        raise _error("CRYPTO_WEAK_ALGORITHM", f"signing key: {weak}")
    if primary.revoked_at is not None:
        raise _error("CRYPTO_KEY_REVOKED", f"our signing key {signer.fingerprint} is revoked")
    if not primary.valid_at(now):
        raise _error(
            "CRYPTO_KEY_EXPIRED",
            f"our signing key {signer.fingerprint} is not valid at {now:%Y-%m-%d}",
        )


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(tz=UTC)


def verify_decrypt(
    message: bytes | Path,
    *,
    sender: PublicKey,
    recipient: SecretKey,
    policy: Policy = DEFAULT_POLICY,
    out: Path | None = None,
    backend: Backend | None = None,
    now: datetime | None = None,
) -> Verified:
    """Verify and decrypt a delivery; nothing of it is returned unless every check passed."""
    chosen = backend or choose_backend(_size(message), policy)
    return chosen.verify_decrypt(
        message, sender=sender, recipient=recipient, policy=policy, now=_now(now), out=out
    )


def sign_encrypt(
    data: bytes | Path,
    *,
    signer: SecretKey,
    recipients: Sequence[PublicKey],
    policy: Policy = DEFAULT_POLICY,
    compress: bool | None = None,
    file_name: str = "",
    out: Path | None = None,
    backend: Backend | None = None,
    now: datetime | None = None,
) -> bytes | None:
    """Sign with ``signer`` and encrypt to every recipient (AES-256); bytes, or None with out."""
    if not recipients:
        raise _error("CRYPTO_KEY_INVALID", "no recipient to encrypt to")
    when = _now(now)
    check_signer(signer, when, policy)
    chosen = backend or choose_backend(_size(data), policy)
    return chosen.sign_encrypt(
        data,
        signer=signer,
        recipients=recipients,
        policy=policy,
        now=when,
        compress=compress,
        file_name=file_name,
        out=out,
    )


def encrypt_to(
    data: bytes,
    recipients: Sequence[PublicKey],
    signer: SecretKey,
    *,
    policy: Policy = DEFAULT_POLICY,
    compress: bool | None = None,
    file_name: str = "",
    backend: Backend | None = None,
    now: datetime | None = None,
) -> bytes:
    """A signed message encrypted to each recipient (per-recipient deliveries of a release)."""
    blob = sign_encrypt(
        data,
        signer=signer,
        recipients=recipients,
        policy=policy,
        compress=compress,
        file_name=file_name,
        backend=backend,
        now=now,
    )
    assert blob is not None
    return blob


def sign_detached(
    data: bytes | Path,
    signer: SecretKey,
    *,
    backend: Backend | None = None,
    now: datetime | None = None,
) -> bytes:
    """An ASCII-armored detached signature (SHA-512) of ``data``, e.g. a release manifest."""
    when = _now(now)
    check_signer(signer, when)
    chosen = backend or choose_backend(_size(data))
    return chosen.sign_detached(data, signer=signer, now=when)


def verify_detached(
    data: bytes | Path,
    signature: bytes,
    sender: PublicKey,
    *,
    pinned_fingerprint: str | None = None,
    policy: Policy = DEFAULT_POLICY,
    backend: Backend | None = None,
    now: datetime | None = None,
) -> SignatureInfo:
    """Check a detached signature against the pinned key (same checks as for messages)."""
    if pinned_fingerprint is not None:
        sender = sender.pinned(pinned_fingerprint)
    chosen = backend or choose_backend(_size(data), policy)
    return chosen.verify_detached(data, signature, sender=sender, policy=policy, now=_now(now))


class DetachedSigner:
    """The sponsor key as a release signer (``cmohub.publish.release.Signer``).

    ``at`` fixes the signature time: RSA (PKCS#1 v1.5) and EdDSA signatures are deterministic,
    so the same data signed at the same time gives the same bytes (releases re-run the same).
    """

    def __init__(
        self, key: SecretKey, *, at: datetime | None = None, backend: Backend | None = None
    ) -> None:
        self._key = key
        self._at = at
        self._backend = backend

    @property
    def fingerprint(self) -> str:
        return self._key.fingerprint

    def sign_detached(self, data: bytes) -> bytes:
        return sign_detached(data, self._key, backend=self._backend, now=self._at)


class PinnedVerifier:
    """A pinned key as a release verifier (``cmohub.publish.release.Verifier``)."""

    def __init__(
        self,
        key: PublicKey,
        pinned_fingerprint: str | None = None,
        *,
        policy: Policy = DEFAULT_POLICY,
        backend: Backend | None = None,
    ) -> None:
        self._key = key.pinned(pinned_fingerprint) if pinned_fingerprint else key
        self._policy = policy
        self._backend = backend

    @property
    def fingerprint(self) -> str:
        return self._key.fingerprint

    def verify_detached(self, data: bytes, signature: bytes) -> None:
        verify_detached(data, signature, self._key, policy=self._policy, backend=self._backend)


def build_message(
    data: bytes,
    *,
    recipient: PublicKey | None,
    signer: SecretKey | None,
    integrity: bool = True,
    cipher: str = "AES256",
    signed_content: bytes | None = None,
    now: datetime | None = None,
) -> bytes:
    """A message built the way a careless or hostile sender might (sandbox and test corpus).

    ``recipient=None`` gives a signed but unencrypted message, ``signer=None`` an unsigned
    one, ``integrity=False`` the old Symmetrically Encrypted Data packet without MDC,
    ``cipher`` another session cipher, and ``signed_content`` a signature over other bytes
    than the ones delivered. Never used for real deliveries: :func:`sign_encrypt` is.
    """
    from pgpy.packet.packets import SKEData  # noqa: PLC0415 - rarely used internals
    from pgpy.symenc import _encrypt  # noqa: PLC0415 - rarely used internals

    when = _now(now)
    with _quiet():
        message = PGPMessage.new(data, format="b", compression=CompressionAlgorithm.Uncompressed)
        if signer is not None:
            covered = PGPMessage.new(
                signed_content if signed_content is not None else data,
                format="b",
                compression=CompressionAlgorithm.Uncompressed,
            )
            message |= signer.unlocked().sign(covered, hash=HashAlgorithm.SHA512, created=when)
        if recipient is None:
            return bytes(message)
        algorithm = SymmetricKeyAlgorithm[cipher]
        session_key = algorithm.gen_key()
        encrypted = recipient._key.encrypt(message, cipher=algorithm, sessionkey=session_key)
        if integrity:
            return bytes(encrypted)
        block = algorithm.block_size // 8
        prefix = os.urandom(block)
        head = _encrypt(prefix + prefix[-2:], bytes(session_key), algorithm)
        resync = bytes(head[2 : block + 2])
        body = _encrypt(bytes(message), bytes(session_key), algorithm, iv=resync)
        unprotected = SKEData()
        unprotected.ct = bytearray(head + body)
        unprotected.update_hlen()
        sessions = b"".join(bytes(s) for s in encrypted._sessionkeys)
        return sessions + bytes(unprotected)


def scan_file(path: Path) -> MessageShape:
    """The outer shape of the message in ``path`` (raises the structural error codes)."""
    try:
        with path.open("rb") as handle:
            return scan_message(handle)
    except ShapeError as error:
        raise _shape_error(error) from None


def fingerprint_of_file(path: Path) -> str:
    return PublicKey(_read_key_file(path), where=str(path)).fingerprint


__all__ = [
    "DEFAULT_POLICY",
    "REJECTION_CODES",
    "Backend",
    "KeyPart",
    "OpenPgpError",
    "PgpyBackend",
    "Policy",
    "PublicKey",
    "RevocationKind",
    "SecretKey",
    "SignatureInfo",
    "Verified",
    "check_signature",
    "choose_backend",
    "encrypt_to",
    "fingerprint_of_file",
    "generate_key",
    "gnupg_available",
    "gnupg_backend",
    "load_public_key",
    "load_secret_key",
    "normalize_fingerprint",
    "pgpy_backend",
    "precheck",
    "revoke_key",
    "scan_file",
    "should_compress",
    "sign_detached",
    "sign_encrypt",
    "verify_decrypt",
    "verify_detached",
]
