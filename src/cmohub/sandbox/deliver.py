"""Play the CMOs: turn a generated program's CMO files into signed and encrypted deliveries.

A sandbox program (``cmohub sandbox generate``) writes each CMO's files in clear under
``cmo/<FIN>/<day>/``. Real CMOs deliver them OpenPGP signed with their key and encrypted to the
sponsor's key, over SFTP or into an exchange folder, with checksum files. :func:`deliver_program`
does exactly that with sandbox CMO keys (created once under ``CMOHUB_HOME/keys/openpgp/
sandbox/``, their public keys imported and pinned for the feeds, as an operator would after a key
exchange): every file becomes ``<day>/<name>.pgp`` in the feed's inbox folder (or on an SFTP
server), written under a temporary name first; checksum files follow the feed's convention.

:func:`bad_message_corpus` builds the deliveries a careless or hostile sender could make
(tampered, truncated, to the wrong recipient, signed by an unpinned, expired or revoked key,
unsigned, without integrity protection, ...), each with the error code it must be rejected with.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

from cmohub.crypto.keyring import Keyring
from cmohub.crypto.openpgp import (
    DEFAULT_POLICY,
    Policy,
    PublicKey,
    SecretKey,
    build_message,
    generate_key,
    revoke_key,
    sign_encrypt,
)
from cmohub.errors import ConfigError
from cmohub.sandbox.world import SITE_BY_FIN
from cmohub.sources.checksums import sums_line
from cmohub.sources.delivery import CmoFeed, load_cmo_feeds

Upload = Callable[[str, bytes], None]  # (path relative to the feed folder, bytes)


@dataclass
class DeliverySummary:
    """What was delivered, per feed: files, bytes, checksum files, the sender fingerprint."""

    files: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    checksum_files: dict[str, int] = field(default_factory=dict)
    senders: dict[str, str] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)


def write_inbox_file(folder: Path, relative: str, data: bytes) -> None:
    """Write like an uploader: ``<name>.part`` first, renamed when complete."""
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, target)


def cmo_key(keyring: Keyring, feed: CmoFeed) -> SecretKey:
    site = SITE_BY_FIN.get(feed.options.cmo)
    name = site.name if site is not None else f"Sandbox CMO {feed.options.cmo}"
    return keyring.ensure_sandbox_cmo(
        feed.name, name=name, email=f"exchange@{feed.options.cmo.lower()}.sandbox.invalid"
    )


def deliver_program(
    program: Path,
    *,
    keyring: Keyring,
    inbox_root: Path | None = None,
    uploads: dict[str, Upload] | None = None,
    feeds: Sequence[str] | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> DeliverySummary:
    """Sign, encrypt and deliver every CMO file of ``program`` (inbox folders or uploads).

    ``uploads`` maps a feed name to a function that stores one file on that feed's SFTP
    server (:meth:`cmohub.sources.sftp.SftpSource.upload`); other feeds go to
    ``inbox_root`` (their ``inbox`` option below it).
    """
    if not (program / "truth.json").is_file():
        raise ConfigError("not a sandbox program (no truth.json)", where=str(program))
    configured = load_cmo_feeds()
    chosen = list(feeds) if feeds else sorted(configured)
    hub = keyring.ensure_hub_key()
    summary = DeliverySummary()
    for name in chosen:
        if name not in configured:
            raise ConfigError(f"no CMO feed {name!r}", code="CMO_FEED_UNKNOWN", where=name)
        feed = configured[name]
        sender = cmo_key(keyring, feed)
        summary.senders[name] = sender.fingerprint
        upload = (uploads or {}).get(name)
        if upload is None:
            if inbox_root is None:
                raise ConfigError(f"no inbox folder or SFTP upload for {name}", where=name)
            folder = feed.inbox_folder(inbox_root)
            summary.targets[name] = str(folder)

            def upload(relative: str, data: bytes, folder: Path = folder) -> None:
                write_inbox_file(folder, relative, data)

        else:
            summary.targets[name] = f"sftp:{feed.options.remote_dir}"
        source = program / "cmo" / feed.options.cmo
        manifests: dict[str, list[str]] = {}
        count = size = sums = 0
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source).as_posix()
            message = sign_encrypt(
                path.read_bytes(),
                signer=sender,
                recipients=[hub.public],
                policy=policy,
                file_name=path.name,
            )
            assert message is not None
            delivered = f"{relative}.pgp"
            upload(delivered, message)
            count += 1
            size += len(message)
            line = sums_line(PurePosixPath(delivered).name, message)
            if feed.options.checksums == "sidecar":
                upload(f"{delivered}.sha256", line.encode())
                sums += 1
            elif feed.options.checksums == "manifest":
                folder_name = str(PurePosixPath(delivered).parent)
                manifests.setdefault(folder_name, []).append(line)
        for folder_name, lines in sorted(manifests.items()):
            prefix = "" if folder_name == "." else f"{folder_name}/"
            upload(f"{prefix}{feed.options.manifest_name}", "".join(lines).encode())
            sums += 1
        summary.files[name] = count
        summary.bytes[name] = size
        summary.checksum_files[name] = sums
    return summary


# --- the bad-message corpus -----------------------------------------------------------------------


@dataclass(frozen=True)
class BadDelivery:
    """A delivery that must be rejected with ``code`` when ``sender`` is the pinned key."""

    name: str
    code: str
    message: bytes
    sender: PublicKey
    description: str


@dataclass(frozen=True)
class CorpusKeys:
    cmo: SecretKey  # the CMO, whose key is pinned
    hub: SecretKey  # the sponsor (recipient)
    other: SecretKey  # someone else: an unpinned signer, a wrong recipient
    expired: SecretKey  # a CMO key that expired long ago


def corpus_keys(*, bits: int = 3072) -> CorpusKeys:
    """Fresh keys for the corpus (keys made in 2024; ``expired`` valid for 30 days only)."""
    made = datetime(2024, 1, 2, tzinfo=UTC)
    return CorpusKeys(
        cmo=generate_key("Sandbox CMO", "cmo@sandbox.invalid", bits=bits, created=made),
        hub=generate_key("Sandbox hub", "hub@sandbox.invalid", bits=bits, created=made),
        other=generate_key("Someone else", "other@sandbox.invalid", bits=bits, created=made),
        expired=generate_key(
            "Sandbox CMO (old key)",
            "cmo-old@sandbox.invalid",
            bits=bits,
            created=made,
            expires_after=timedelta(days=30),
        ),
    )


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]


#: The names of :func:`bad_message_corpus`'s deliveries, in order (tests parametrize on them).
BAD_DELIVERY_NAMES = (
    "tampered_ciphertext",
    "truncated",
    "wrong_recipient",
    "unpinned_signer",
    "expired_key",
    "revoked_key",
    "unsigned",
    "no_integrity_protection",
    "weak_cipher",
    "not_encrypted",
    "bad_signature",
    "not_openpgp",
)


def bad_message_corpus(payload: bytes, keys: CorpusKeys) -> list[BadDelivery]:
    """Deliveries of ``payload`` that must each be rejected with their own code."""
    deliveries = _bad_deliveries(payload, keys)
    if tuple(d.name for d in deliveries) != BAD_DELIVERY_NAMES:
        raise AssertionError("BAD_DELIVERY_NAMES does not list the corpus")
    return deliveries


def _bad_deliveries(payload: bytes, keys: CorpusKeys) -> list[BadDelivery]:
    cmo, hub, other = keys.cmo, keys.hub, keys.other
    good = sign_encrypt(payload, signer=cmo, recipients=[hub.public], compress=False)
    assert good is not None
    wrong = sign_encrypt(payload, signer=cmo, recipients=[other.public], compress=False)
    unpinned = sign_encrypt(payload, signer=other, recipients=[hub.public], compress=False)
    assert wrong is not None and unpinned is not None
    return [
        BadDelivery(
            "tampered_ciphertext",
            "CRYPTO_TAMPERED",
            _flip(good, len(good) * 2 // 3),
            cmo.public,
            "one byte of the encrypted data changed in transit",
        ),
        BadDelivery(
            "truncated",
            "CRYPTO_TRUNCATED",
            good[: len(good) * 3 // 5],
            cmo.public,
            "the upload stopped part-way",
        ),
        BadDelivery(
            "wrong_recipient",
            "CRYPTO_WRONG_RECIPIENT",
            wrong,
            cmo.public,
            "encrypted to another key than the sponsor's",
        ),
        BadDelivery(
            "unpinned_signer",
            "CRYPTO_SIGNER_NOT_PINNED",
            unpinned,
            cmo.public,
            "signed by a key that is not the CMO's pinned key",
        ),
        BadDelivery(
            "expired_key",
            "CRYPTO_KEY_EXPIRED",
            build_message(payload, recipient=hub.public, signer=keys.expired),
            keys.expired.public,
            "signed with the CMO's key after that key expired",
        ),
        BadDelivery(
            "revoked_key",
            "CRYPTO_KEY_REVOKED",
            good,
            revoke_key(cmo),
            "signed by a key the CMO has since revoked (compromised)",
        ),
        BadDelivery(
            "unsigned",
            "CRYPTO_UNSIGNED",
            build_message(payload, recipient=hub.public, signer=None),
            cmo.public,
            "encrypted to the sponsor but not signed",
        ),
        BadDelivery(
            "no_integrity_protection",
            "CRYPTO_NO_INTEGRITY",
            build_message(payload, recipient=hub.public, signer=cmo, integrity=False),
            cmo.public,
            "old Symmetrically Encrypted Data packet without modification detection",
        ),
        BadDelivery(
            "weak_cipher",
            "CRYPTO_WEAK_ALGORITHM",
            build_message(payload, recipient=hub.public, signer=cmo, cipher="AES128"),
            cmo.public,
            "session key cipher AES-128 instead of AES-256",
        ),
        BadDelivery(
            "not_encrypted",
            "CRYPTO_NOT_ENCRYPTED",
            build_message(payload, recipient=None, signer=cmo),
            cmo.public,
            "signed but sent in clear",
        ),
        BadDelivery(
            "bad_signature",
            "CRYPTO_BAD_SIGNATURE",
            build_message(
                payload, recipient=hub.public, signer=cmo, signed_content=payload + b"\n"
            ),
            cmo.public,
            "the signature covers other content than the file",
        ),
        BadDelivery(
            "not_openpgp",
            "CRYPTO_MALFORMED",
            payload,
            cmo.public,
            "the plain file, not an OpenPGP message",
        ),
    ]
