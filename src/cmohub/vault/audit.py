"""The vault's audit log: append-only, hash-chained events; signed Merkle checkpoints.

**Events** (table ``vault_audit``): ``seq`` (1, 2, 3, ... without gaps), ``at`` (UTC with
offset), ``event`` (one of :data:`EVENT_TYPES`), ``actor``, ``role``, ``feed``, ``purpose``,
``ticket``, ``coi``, ``outcome`` (``ok``, ``granted``, ``refused``, ``conflict``, ...),
``details`` (canonical JSON of counts and codes — never an identifier value), ``prev_hash``
and ``hash``::

    hash = SHA-256( "cmohub-audit/1\\n" + JSON [seq, at, event, actor, role, feed, purpose,
                    ticket, coi, outcome, details, prev_hash_hex] )

with compact separators and UTF-8; ``prev_hash`` of event 1 is 32 zero bytes. Anyone can
re-compute it with any JSON library.

**Checkpoints** (table ``vault_checkpoint``) sign the RFC 9162 Merkle tree head of the first
``size`` events (leaf = SHA-256(0x00 | event hash), node = SHA-256(0x01 | left | right), the
empty tree is SHA-256 of nothing) with the vault's Ed25519 audit key::

    signed message = "cmohub-vault-checkpoint/1\\n" + canonical JSON of
                     {created_at, key_version, public_key, root, size, vault_id}

Publishing embeds the latest checkpoint in every manifest, so recipients hold witnesses that
the vault cannot take back.

**Verification** (:func:`verify_log`) walks the log once and reports the first event whose
sequence number, link or hash is wrong (an edited, deleted, inserted or reordered event); a
checkpoint whose signature does not verify; a checkpoint whose root no longer matches (the
chain was recomputed after an edit — the report names the first sequence number after the
last checkpoint that still matches); and a log shorter than its last checkpoint (truncated).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.engine import Connection

from cmohub.errors import CryptoError
from cmohub.vault.store import Store

GENESIS = bytes(32)
_EVENT_DOMAIN = b"cmohub-audit/1\n"
_CHECKPOINT_DOMAIN = b"cmohub-vault-checkpoint/1\n"

#: Every event type the vault writes.
EVENT_TYPES = (
    "init",
    "tokenize",
    "lookup",
    "verify",
    "enroll",
    "merge",
    "reveal",
    "refuse",
    "withdraw",
    "rotate",
    "export",
    "restore",
)

AUDIT_COLUMNS = (
    "seq",
    "at",
    "event",
    "actor",
    "role",
    "feed",
    "purpose",
    "ticket",
    "coi",
    "outcome",
    "details",
    "prev_hash",
    "hash",
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event to append. ``details`` holds counts and codes, never identifier values."""

    event: str
    actor: str
    role: str
    outcome: str = "ok"
    feed: str | None = None
    purpose: str | None = None
    ticket: str | None = None
    coi: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


def canonical_details(details: Mapping[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(
    *,
    seq: int,
    at: str,
    event: str,
    actor: str,
    role: str,
    feed: str | None,
    purpose: str | None,
    ticket: str | None,
    coi: str | None,
    outcome: str,
    details: str,
    prev_hash: bytes,
) -> bytes:
    """The hash of one event (see the module docstring)."""
    payload = json.dumps(
        [
            seq,
            at,
            event,
            actor,
            role,
            feed,
            purpose,
            ticket,
            coi,
            outcome,
            details,
            prev_hash.hex(),
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(_EVENT_DOMAIN + payload.encode("utf-8")).digest()


def chain_rows(
    events: Sequence[AuditEvent], *, at: str, last_seq: int, last_hash: bytes
) -> list[tuple[Any, ...]]:
    """vault_audit rows (AUDIT_COLUMNS order) for ``events`` following (last_seq, last_hash)."""
    rows: list[tuple[Any, ...]] = []
    seq, prev = last_seq, last_hash
    for e in events:
        seq += 1
        details = canonical_details(e.details)
        digest = event_hash(
            seq=seq,
            at=at,
            event=e.event,
            actor=e.actor,
            role=e.role,
            feed=e.feed,
            purpose=e.purpose,
            ticket=e.ticket,
            coi=e.coi,
            outcome=e.outcome,
            details=details,
            prev_hash=prev,
        )
        rows.append(
            (
                seq,
                at,
                e.event,
                e.actor,
                e.role,
                e.feed,
                e.purpose,
                e.ticket,
                e.coi,
                e.outcome,
                details,
                prev,
                digest,
            )
        )
        prev = digest
    return rows


def log_head(connection: Connection) -> tuple[int, bytes]:
    """(last sequence number, last hash) of the log; (0, GENESIS) when empty."""
    row = connection.exec_driver_sql(
        "SELECT seq, hash FROM vault_audit ORDER BY seq DESC LIMIT 1"
    ).first()
    return (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))


def append_events(
    connection: Connection, store: Store, events: Sequence[AuditEvent], *, at: str
) -> list[int]:
    """Append ``events`` in the caller's transaction; return their sequence numbers."""
    if not events:
        return []
    store.lock_audit(connection)
    last_seq, last_hash = log_head(connection)
    rows = chain_rows(events, at=at, last_seq=last_seq, last_hash=last_hash)
    store.insert_rows(connection, "vault_audit", AUDIT_COLUMNS, rows)
    return [row[0] for row in rows]


# --- Merkle tree (RFC 9162) ------------------------------------------------------------------


def leaf_hash(entry_hash: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry_hash).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleAccumulator:
    """Merkle tree head of a growing list of leaves in O(log n) memory (compact range)."""

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (subtree height, hash), heights decreasing
        self.size = 0

    def push(self, entry_hash: bytes) -> None:
        height, digest = 0, leaf_hash(entry_hash)
        stack = self._stack
        while stack and stack[-1][0] == height:
            digest = node_hash(stack.pop()[1], digest)
            height += 1
        stack.append((height, digest))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        digest = self._stack[-1][1]
        for _height, left in reversed(self._stack[:-1]):
            digest = node_hash(left, digest)
        return digest


def merkle_root(entry_hashes: Iterable[bytes]) -> bytes:
    accumulator = MerkleAccumulator()
    for entry in entry_hashes:
        accumulator.push(entry)
    return accumulator.root()


# --- checkpoints -----------------------------------------------------------------------------


def public_key_of(seed: bytes) -> bytes:
    """The raw Ed25519 public key of an audit key (32-byte seed)."""
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement: the first ``size`` events of vault ``vault_id`` have Merkle ``root``."""

    vault_id: str
    size: int
    root: str  # hex
    created_at: str  # UTC with offset
    key_version: int
    public_key: str  # hex, raw Ed25519
    signature: str  # hex

    @property
    def key_id(self) -> str:
        """A short fingerprint of the signing key: the first 16 bytes of SHA-256, hex."""
        return hashlib.sha256(bytes.fromhex(self.public_key)).hexdigest()[:32]

    def message(self) -> bytes:
        body = {
            "created_at": self.created_at,
            "key_version": self.key_version,
            "public_key": self.public_key,
            "root": self.root,
            "size": self.size,
            "vault_id": self.vault_id,
        }
        return _CHECKPOINT_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode(
            "ascii"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what manifests embed), with the key fingerprint added."""
        return {**asdict(self), "key_id": self.key_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        try:
            return cls(
                vault_id=str(data["vault_id"]),
                size=int(data["size"]),
                root=str(data["root"]),
                created_at=str(data["created_at"]),
                key_version=int(data["key_version"]),
                public_key=str(data["public_key"]),
                signature=str(data["signature"]),
            )
        except (KeyError, TypeError, ValueError):
            raise CryptoError(
                "not a vault checkpoint (missing or malformed fields)",
                code="VAULT_CHECKPOINT_INVALID",
            ) from None


def sign_checkpoint(
    *, vault_id: str, size: int, root: bytes, created_at: str, key_version: int, seed: bytes
) -> Checkpoint:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    unsigned = Checkpoint(
        vault_id=vault_id,
        size=size,
        root=root.hex(),
        created_at=created_at,
        key_version=key_version,
        public_key=public_key_of(seed).hex(),
        signature="",
    )
    signature = private.sign(unsigned.message()).hex()
    return Checkpoint(**{**asdict(unsigned), "signature": signature})


def verify_checkpoint(checkpoint: Checkpoint | Mapping[str, Any], public_key: bytes | str) -> bool:
    """True when ``checkpoint`` is signed by ``public_key`` (raw 32 bytes or hex). Pure."""
    cp = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.from_dict(checkpoint)
    try:
        key = bytes.fromhex(public_key) if isinstance(public_key, str) else public_key
        if cp.public_key != key.hex():
            return False
        Ed25519PublicKey.from_public_bytes(key).verify(bytes.fromhex(cp.signature), cp.message())
    except (InvalidSignature, ValueError):
        return False
    return True


# --- verification ----------------------------------------------------------------------------


class AuditStatus(StrEnum):
    INTACT = "intact"
    TAMPERED = "tampered"
    UNVERIFIABLE = "unverifiable"


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The outcome of :func:`verify_log`."""

    status: AuditStatus
    events: int
    checkpoints: int
    reason: str
    first_bad_seq: int | None = None
    root: str = ""  # hex Merkle root of the events verified (when intact)

    @property
    def intact(self) -> bool:
        return self.status is AuditStatus.INTACT


def verify_log(
    rows: Iterable[Sequence[Any]],
    checkpoints: Sequence[Checkpoint],
    *,
    public_keys: Mapping[int, bytes],
) -> AuditVerification:
    """Check a log (rows in AUDIT_COLUMNS order, by seq) against signed checkpoints.

    ``public_keys`` maps audit key versions to the public keys this vault trusts (derived
    from its own key provider, not from the database); a checkpoint signed by a version that
    is not there makes the log unverifiable.
    """
    ordered = sorted(checkpoints, key=lambda c: c.size)
    for cp in ordered:
        key = public_keys.get(cp.key_version)
        if key is None:
            return AuditVerification(
                AuditStatus.UNVERIFIABLE,
                0,
                len(ordered),
                f"audit key version {cp.key_version} is not available to check the checkpoint "
                f"of {cp.created_at}",
            )
        if not verify_checkpoint(cp, key):
            return AuditVerification(
                AuditStatus.TAMPERED,
                0,
                len(ordered),
                f"the checkpoint of {cp.created_at} (size {cp.size}) does not carry a valid "
                "signature of this vault's audit key",
            )
    accumulator = MerkleAccumulator()
    pending = list(ordered)
    next_cp = 0
    while next_cp < len(pending) and pending[next_cp].size == 0:
        if pending[next_cp].root != EMPTY_ROOT.hex():
            return AuditVerification(
                AuditStatus.TAMPERED, 0, len(ordered), "empty-log checkpoint has a wrong root", 1
            )
        next_cp += 1
    last_good_size = 0
    expected_seq = 1
    prev = GENESIS
    dumps = json.dumps
    sha256 = hashlib.sha256
    for row in rows:
        seq = int(row[0])
        if seq != expected_seq:
            missing = expected_seq if seq > expected_seq else seq
            return AuditVerification(
                AuditStatus.TAMPERED,
                expected_seq - 1,
                len(ordered),
                f"event {missing}: sequence broken (expected {expected_seq}, found {seq}): "
                "an event was deleted or inserted",
                missing,
            )
        stored_prev, stored_hash = bytes(row[11]), bytes(row[12])
        if stored_prev != prev:
            return AuditVerification(
                AuditStatus.TAMPERED,
                seq - 1,
                len(ordered),
                f"event {seq}: does not link to event {seq - 1} (reordered, inserted or edited)",
                seq,
            )
        payload = dumps(
            [
                seq,
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                row[8],
                row[9],
                row[10],
                prev.hex(),
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        digest = sha256(_EVENT_DOMAIN + payload.encode("utf-8")).digest()
        if digest != stored_hash:
            return AuditVerification(
                AuditStatus.TAMPERED,
                seq - 1,
                len(ordered),
                f"event {seq}: content does not match its hash (edited)",
                seq,
            )
        prev = digest
        accumulator.push(digest)
        expected_seq += 1
        while next_cp < len(pending) and pending[next_cp].size == accumulator.size:
            cp = pending[next_cp]
            if accumulator.root().hex() != cp.root:
                return AuditVerification(
                    AuditStatus.TAMPERED,
                    accumulator.size,
                    len(ordered),
                    f"events {last_good_size + 1}..{cp.size} no longer match the checkpoint "
                    f"signed at {cp.created_at}: the log was rewritten and re-chained",
                    last_good_size + 1,
                )
            last_good_size = cp.size
            next_cp += 1
    if next_cp < len(pending):
        cp = pending[-1]
        return AuditVerification(
            AuditStatus.TAMPERED,
            accumulator.size,
            len(ordered),
            f"the log has {accumulator.size} events but the checkpoint of {cp.created_at} "
            f"covers {cp.size}: events after {accumulator.size} were removed (truncated)",
            accumulator.size + 1,
        )
    return AuditVerification(
        AuditStatus.INTACT,
        accumulator.size,
        len(ordered),
        f"{accumulator.size} events, {len(ordered)} checkpoints verified",
        root=accumulator.root().hex(),
    )
