"""The vault: where a patient's identifiers and the manufacturing ID (COI) meet.

See the package docstring (:mod:`cmohub.vault`) for the operations, the storage layout and the
error codes. This module holds :class:`Vault`; its result types are in :mod:`cmohub.vault.results`.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import secrets
import struct
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar, cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from sqlalchemy.engine import Connection, Engine

from cmohub.crypto.envelope import DataKey, generate_key, unwrap_key, wrap_key
from cmohub.errors import (
    AccessDenied,
    ConfigError,
    CryptoError,
    HubError,
    IdentifierError,
    VaultError,
)
from cmohub.identifiers import Coi, RandomSource, parse_coi
from cmohub.identity import Actor, CoiStatus, SubjectIdentity, TokenizeRequest
from cmohub.log import get_logger
from cmohub.sensitive import Sensitive
from cmohub.vault.audit import (
    AuditEvent,
    AuditStatus,
    AuditVerification,
    Checkpoint,
    append_events,
    public_key_of,
    sign_checkpoint,
    verify_log,
)
from cmohub.vault.keys import KeyProvider, KeyPurpose, MemoryKeyProvider
from cmohub.vault.normalize import (
    DEMOGRAPHIC_FIELDS,
    SystemRegistry,
    normalize_demographics,
    normalize_event,
)
from cmohub.vault.results import (
    AuditRecord,
    BackupResult,
    CopyCheck,
    EnrollmentAssignment,
    EnrollResult,
    InitResult,
    LinkageMismatch,
    MergeResult,
    RestoreResult,
    RevealedIdentity,
    RotationResult,
    TokenizeResult,
    VaultStatus,
    WithdrawResult,
)
from cmohub.vault.roles import PRIVACY_OFFICER, Roles
from cmohub.vault.store import (
    Backend,
    CoiBatch,
    Store,
    backend_of,
    check_schema,
    create_vault_engine,
    describe,
    own_vault_file,
    run_transaction,
    truncate_sqlite_wal,
    upgrade_schema,
)

log = get_logger("cmohub.vault")

# The purposes backups and restores are recorded with: what `status` finds them by.
_BACKUP_PURPOSE = "database backup"
_RESTORE_PURPOSE = "restore from backup"

DEFAULT_FIN = "A9999"
#: Values sealed under one data key before the vault starts a new one (far below 2**32).
DATA_KEY_LIMIT = 2**24
_ALLOCATION_ATTEMPTS = 8
_SEQUENCE_SPACE = 36**6
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PAYLOAD_FORMAT = b"\x01"
_COI_AAD = b"cmohub.vault.coi.v1\x00"
_ALIAS_AAD = b"cmohub.vault.alias.v1\x00"
_DATA_KEY_CONTEXT = b"cmohub.vault.data-key.v1\x00"
_ROTATION_PAGE = 10_000
_SEAL_CHUNK = 4096  # new rows sealed at a time (PostgreSQL inserts one chunk while we seal)
_SELECT_AUDIT = (
    "SELECT seq, at, event, actor, role, feed, purpose, ticket, coi, outcome, details, "
    "prev_hash, hash FROM vault_audit ORDER BY seq"
)

Clock = Callable[[], datetime]
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
_NO_DEMOGRAPHICS: Mapping[str, str] = {}


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- internals -------------------------------------------------------------------------------


#: A normalized request: (system, value, therapy event, demographics). A plain tuple: a batch
#: makes one per identity, and a NamedTuple's constructor costs five times as much.
_Prepared = tuple[str, str, str, Mapping[str, str]]


_Demo = tuple[tuple[bytes | None, bytes | None, bytes | None], int | None]
_DemoRow = tuple[bytes | None, bytes | None, bytes | None, int | None]
#: A subject and therapy event: their two 32-byte digests, concatenated. One bytes object, not
#: a tuple: a batch looks up one per identity in a dict keyed by the rows found, and a tuple key
#: costs two more objects to reach and compare (about a third more per lookup). Fixed widths
#: keep the order of (subject, event).
_Pair = bytes
_DIGEST = 32


def _pair_keys(subjects: Sequence[bytes], events: Sequence[bytes]) -> list[_Pair]:
    if len(subjects) != len(events):
        raise ValueError("one event digest per subject digest")
    return list(map(bytes.__add__, subjects, events))


def _subject_of(pair: _Pair) -> bytes:
    return pair[:_DIGEST]


def _event_of(pair: _Pair) -> bytes:
    return pair[_DIGEST:]


class _Request(Protocol):
    """A tokenize request or an enrollment assignment: an identity for a therapy event."""

    @property
    def identity(self) -> SubjectIdentity: ...

    @property
    def therapy_event(self) -> str: ...


class _Active(NamedTuple):
    vault_id: str
    index_version: int
    kek_version: int
    audit_version: int


class _Refusal(Exception):
    """Roll back the data transaction, audit the refusal, then raise ``error``."""

    def __init__(self, error: HubError, events: list[AuditEvent]) -> None:
        super().__init__(error.code)
        self.error = error
        self.events = events


class _IndexKey:
    """HMAC-SHA256 under one version of the index key."""

    __slots__ = ("_base", "_event_base", "_prefixes", "_system_bases", "version")

    def __init__(self, key: bytes, version: int) -> None:
        self._base = crypto_hmac.HMAC(key, hashes.SHA256())
        self._prefixes: dict[str, bytes] = {}
        # Batches copy an HMAC that has absorbed the message's constant prefix already: the
        # same digests, without building prefix + value for every identity.
        self._event_base = self._base.copy()
        self._event_base.update(b"event\x00")
        self._system_bases: dict[str, crypto_hmac.HMAC] = {}
        self.version = version

    def digest(self, data: bytes) -> bytes:
        mac = self._base.copy()
        mac.update(data)
        return mac.finalize()

    def subject(self, system: str, value: str) -> bytes:
        prefix = self._prefixes.get(system)
        if prefix is None:
            prefix = b"subject\x00" + system.encode() + b"\x00"
            if len(self._prefixes) < 1024:
                self._prefixes[system] = prefix
        mac = self._base.copy()
        mac.update(prefix + value.encode())
        return mac.finalize()

    def event(self, event: str) -> bytes:
        mac = self._base.copy()
        mac.update(b"event\x00" + event.encode())
        return mac.finalize()

    def _system_base(self, system: str) -> crypto_hmac.HMAC:
        base = self._system_bases.get(system)
        if base is None:
            base = self._base.copy()
            base.update(b"subject\x00" + system.encode() + b"\x00")
            if len(self._system_bases) < 1024:
                self._system_bases[system] = base
        return base

    def subjects(self, items: Sequence[_Prepared]) -> list[bytes]:
        """:meth:`subject` of each prepared identity (the loop of a batch, without calls)."""
        out: list[bytes] = []
        append = out.append
        last_system: str | None = None
        copy = self._base.copy  # replaced on the first item
        for system, value, _, _ in items:
            if system is not last_system:
                last_system, copy = system, self._system_base(system).copy
            mac = copy()
            mac.update(value.encode())
            append(mac.finalize())
        return out

    def events(self, items: Sequence[_Prepared]) -> list[bytes]:
        """:meth:`event` of each prepared identity's therapy event."""
        copy = self._event_base.copy
        out: list[bytes] = []
        append = out.append
        for _, _, event, _ in items:
            mac = copy()
            mac.update(event.encode())
            append(mac.finalize())
        return out

    def demographic(self, name: str, coi: str, value: str) -> bytes:
        # Salted with the COI: equal birth dates of two subjects do not give equal hashes.
        return self.digest(f"demo\x00{name}\x00{coi}\x00{value}".encode())[:16]


@dataclass(frozen=True, slots=True)
class _Writing:
    """What every row written by one batch shares."""

    index: _IndexKey
    sealing: tuple[str, DataKey]
    actor: Actor
    at: str
    year: int


class _Keys:
    """Loaded keys, by purpose and version (read from the provider once)."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider
        self._index: dict[int, _IndexKey] = {}
        self._raw: dict[tuple[KeyPurpose, int], bytes] = {}

    def raw(self, purpose: KeyPurpose, version: int) -> bytes:
        key = self._raw.get((purpose, version))
        if key is None:
            key = self.provider.load(purpose, version)
            self._raw[(purpose, version)] = key
        return key

    def index(self, version: int) -> _IndexKey:
        key = self._index.get(version)
        if key is None:
            key = _IndexKey(self.raw(KeyPurpose.INDEX, version), version)
            self._index[version] = key
        return key


@contextmanager
def _bulk() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch builds its per-identity objects.

    A batch of 100,000 keeps hundreds of thousands of small tuples alive; with the collector
    on, every 700 allocations trigger a pass over them, which more than doubled the cost per
    identity. Nothing a batch creates forms reference cycles; collection resumes afterwards.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _batched(method: Callable[P, R]) -> Callable[P, R]:
    """Run a batch method with the garbage collector paused (see :func:`_bulk`)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _bulk():
            return method(*args, **kwargs)

    return wrapper


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return None if value is None else bytes(value)


def _pairs(result: Any) -> dict[Any, Any]:
    """A two-column result as a dict."""
    return {row[0]: row[1] for row in result}


def _payload(system: str, value: str, event: str) -> bytes:
    return _PAYLOAD_FORMAT + f"{system}\x00{value}\x00{event}".encode()


def _parse_payload(plaintext: bytes, parts: int) -> list[str]:
    if not plaintext.startswith(_PAYLOAD_FORMAT):
        raise CryptoError("sealed identifier has an unknown format", code="VAULT_DECRYPT_FAILED")
    fields = plaintext[1:].decode().split("\x00")
    if len(fields) != parts:
        raise CryptoError("sealed identifier has an unknown format", code="VAULT_DECRYPT_FAILED")
    return fields


# Coi is a frozen dataclass with slots: its fields' slot descriptors set them directly.
_SET_FIN = Coi.__dict__["fin"].__set__
_SET_YEAR = Coi.__dict__["year"].__set__
_SET_SEQUENCE = Coi.__dict__["sequence"].__set__


def _coi_from_text(text: str) -> Coi:
    """A Coi from a COI the vault itself wrote (validated by parse_coi or allocated)."""
    return _cois_from_texts([text])[0]


def _cois_from_texts(texts: Sequence[str]) -> list[Coi]:
    """:func:`_coi_from_text` of each text.

    Skips Coi.__post_init__'s re-validation: this runs once per identity in every batch.
    COIs allocated by one vault in one year share their facility and year, so those two
    strings are shared too and only the sequence is sliced from each text. One pass: the
    texts come from the driver scattered in memory, and each extra pass over them (as
    ``map`` pipelines do) cost more in cache misses than the loop saves.
    """
    if not texts:
        return []
    new = object.__new__
    set_fin, set_year, set_sequence = _SET_FIN, _SET_YEAR, _SET_SEQUENCE
    prefix = texts[0][:9]
    fin, year = prefix[2:7], prefix[7:9]
    cois: list[Coi] = []
    append = cois.append
    for text in texts:
        coi = new(Coi)
        if len(text) == 16 and text.startswith(prefix):
            set_fin(coi, fin)
            set_year(coi, year)
        elif len(text) == 16 and text.startswith("CH"):
            set_fin(coi, text[2:7])
            set_year(coi, text[7:9])
        else:
            raise VaultError("the vault database holds a malformed COI", code="VAULT_STORE_ERROR")
        set_sequence(coi, text[9:15])
        append(coi)
    return cois


# COI sequences come from a stream of 64-bit words: one draw below 2**1024 - 1 is sixteen
# words (one system call instead of sixteen); a word at or above the largest multiple of
# 36**6 that fits is skipped (about one in 10**10), the rest give word % 36**6, uniform.
# (Below 2**1024 exactly, randrange would draw 1025 bits and throw half the draws away; the
# one value 2**1024 - 1 left out is all skipped words anyway.)
_DRAW = 16
_DRAW_SPACE = 2 ** (64 * _DRAW) - 1
_WORDS = struct.Struct(f"<{_DRAW}Q")
_WORD_LIMIT = (2**64 // _SEQUENCE_SPACE) * _SEQUENCE_SPACE
_NUMPY_FROM = 1024  # COIs; smaller draws are not worth numpy's overhead
_HALF = 36**3
_TRIPLES = [a + b + c for a in _ALPHABET for b in _ALPHABET for c in _ALPHABET]
# ISO/IEC 7064 MOD 37-2 is linear: after three characters the running value s becomes
# 8*s + _MOD37[triple] (mod 37), so a check character costs two table lookups.
_MOD37 = [
    (8 * _ALPHABET.index(t[0]) + 4 * _ALPHABET.index(t[1]) + 2 * _ALPHABET.index(t[2])) % 37
    for t in _TRIPLES
]
_MOD37_HIGH = [8 * m for m in _MOD37]
_CHECK_ALPHABET = _ALPHABET + "*"
# The check character of every total 64 * prefix state + 8 * high + low can reach (no modulo
# in the loop).
_CHECK_OF = [_CHECK_ALPHABET[(38 - total % 37) % 37] for total in range(64 * 37 + 8 * 37 + 37)]


def _mod37_state(data: str) -> int:
    total = 0
    for ch in data:
        total = ((total + _CHECK_ALPHABET.index(ch)) * 2) % 37
    return total


def _stuck() -> VaultError:
    return VaultError(
        "the random source keeps repeating COI sequences", code="VAULT_ALLOCATION_EXHAUSTED"
    )


def _draw_cois(rng: RandomSource, prefix: str, count: int) -> list[str]:
    """``count`` distinct random COIs (data form) ``prefix`` + 6 random characters + check.

    The first ``count`` distinct sequences of the word stream, in order. Large batches are
    computed with numpy (:func:`_draw_cois_numpy`, the same COIs from the same stream) when
    the process has loaded it already (pipelines do, through pandas): importing it takes 0.36 s
    here, more than it saves on a batch of 100,000.
    """
    if count >= _NUMPY_FROM and "numpy" in sys.modules:
        return _draw_cois_numpy(rng, prefix, count)
    return _draw_cois_python(rng, prefix, count)


def _draw_cois_python(rng: RandomSource, prefix: str, count: int) -> list[str]:
    """:func:`_draw_cois` one word at a time."""
    state = 64 * _mod37_state(prefix)
    seen: set[str] = set()
    out: list[str] = []
    append, add = out.append, seen.add
    triples, high_part, low_part, check_of = _TRIPLES, _MOD37_HIGH, _MOD37, _CHECK_OF
    draws = 0
    while len(out) < count:
        draws += 1
        if draws > count + 64:
            raise _stuck()
        for word in _WORDS.unpack(rng.randrange(_DRAW_SPACE).to_bytes(8 * _DRAW, "little")):
            if word >= _WORD_LIMIT:
                continue
            high, low = divmod(word % _SEQUENCE_SPACE, _HALF)
            sequence = triples[high] + triples[low]
            if sequence in seen:
                continue
            add(sequence)
            append(prefix + sequence + check_of[state + high_part[high] + low_part[low]])
            if len(out) == count:
                break
    return out


@functools.cache
def _numpy_tables() -> tuple[Any, Any, Any, Any]:
    import numpy as np  # noqa: PLC0415 - only large batches need it

    return (
        np.frombuffer(_ALPHABET.encode("ascii"), dtype=np.uint8),
        np.array(_MOD37_HIGH, dtype=np.int64),
        np.array(_MOD37, dtype=np.int64),
        np.frombuffer("".join(_CHECK_OF).encode("ascii"), dtype=np.uint8),
    )


def _draw_cois_numpy(rng: RandomSource, prefix: str, count: int) -> list[str]:
    """:func:`_draw_cois` for large batches: the word stream's arithmetic in numpy.

    About 0.4-0.6 us per COI instead of 1.1-1.3 (100,000 at a time), most of it reading
    the random source.
    """
    import numpy as np  # noqa: PLC0415 - only large batches need it

    alphabet, high_part, low_part, check_of = _numpy_tables()
    prefix_codes = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    if len(prefix_codes) != 9:
        raise ValueError("a COI prefix is CH, the facility and the year: 9 characters")
    words = np.empty(0, dtype=np.uint64)
    chosen = np.empty(0, dtype=np.uint64)
    draws = 0
    while len(chosen) < count:
        more = -(-(count - len(chosen)) // _DRAW) + 1  # draws still needed, and one spare
        draws += more
        if draws > count + 64:
            raise _stuck()
        stream = b"".join(
            rng.randrange(_DRAW_SPACE).to_bytes(8 * _DRAW, "little") for _ in range(more)
        )
        words = np.concatenate([words, np.frombuffer(stream, dtype="<u8")])
        sequences = words[words < _WORD_LIMIT] % _SEQUENCE_SPACE
        _, first = np.unique(sequences, return_index=True)
        chosen = sequences[np.sort(first)[:count]]
    high, low = np.divmod(chosen.astype(np.int64), _HALF)
    codes = np.empty((count, 17), dtype=np.uint8)  # each COI and a newline, to split in C
    codes[:, 16] = ord("\n")
    codes[:, :9] = prefix_codes
    for column, part in ((9, high), (12, low)):
        codes[:, column] = alphabet[part // 1296]
        codes[:, column + 1] = alphabet[(part // 36) % 36]
        codes[:, column + 2] = alphabet[part % 36]
    codes[:, 15] = check_of[64 * _mod37_state(prefix) + high_part[high] + low_part[low]]
    return codes.tobytes().decode("ascii").split("\n")[:count]


def _where(position: int, error: HubError, what: str = "requests") -> str:
    return f"{what}[{position}]" + (f", {error.where}" if error.where else "")


# --- the vault -------------------------------------------------------------------------------


class Vault:
    """The keyed mapping vault. Implements :class:`cmohub.identity.IdentityPort`.

    Construct with :func:`cmohub.vault.open_vault` (settings), :meth:`open` (a URL and a key
    provider, schema checked), or :meth:`ephemeral` (in memory, for dry runs and tests). A
    vault object may be shared by threads; each call is one database transaction.
    """

    def __init__(
        self,
        database: str | Engine,
        keys: KeyProvider,
        *,
        roles: Roles | None = None,
        systems: SystemRegistry | None = None,
        fin: str = DEFAULT_FIN,
        clock: Clock = utc_now,
        rng: RandomSource | None = None,
    ) -> None:
        try:
            Coi(fin=fin, year="00", sequence="000000")
        except IdentifierError as error:
            raise ConfigError(
                f"vault FIN is not a facility identification number ({error.message})",
                code="VAULT_FIN_INVALID",
            ) from None
        self._engine = create_vault_engine(database) if isinstance(database, str) else database
        self._store = Store(backend_of(self._engine))
        self._keys = _Keys(keys)
        self._roles = roles if roles is not None else Roles()
        self._systems = systems if systems is not None else SystemRegistry.default()
        self._fin = fin
        self._clock = clock
        self._rng: RandomSource = rng if rng is not None else secrets.SystemRandom()
        self._lock = threading.Lock()
        self._sealing: tuple[str, DataKey, int] | None = None  # (id, key, values sealed)
        self._opening: dict[str, DataKey] = {}

    def __repr__(self) -> str:
        return f"Vault({describe(self._engine)!r})"

    @classmethod
    def open(cls, database: str | Engine, keys: KeyProvider, **options: Any) -> Vault:
        """A vault on an initialized database (VAULT_NOT_INITIALIZED / _SCHEMA_OUTDATED)."""
        vault = cls(database, keys, **options)
        check_schema(vault._engine)
        return vault

    def check_schema(self) -> None:
        """Raise VAULT_NOT_INITIALIZED / VAULT_SCHEMA_OUTDATED unless the schema is current."""
        check_schema(self._engine)

    @classmethod
    def ephemeral(cls, **options: Any) -> Vault:
        """An in-memory vault with throwaway keys (``cmohub map --vault ephemeral``, tests)."""
        vault = cls("sqlite://", MemoryKeyProvider.generated(), **options)
        vault.init(actor=Actor(name="ephemeral", role="service"))
        return vault

    @property
    def backend(self) -> Backend:
        return self._store.backend

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def key_provider(self) -> KeyProvider:
        return self._keys.provider

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ConfigError(
                "the vault clock must return aware datetimes", code="VAULT_CLOCK_INVALID"
            )
        return now.astimezone(UTC)

    def _stamp(self) -> tuple[datetime, str]:
        now = self._now()
        return now, now.isoformat(timespec="microseconds")

    def _tx(self, work: Callable[[Connection], Any], *, readonly: bool = False) -> Any:
        return run_transaction(self._engine, work, readonly=readonly)

    def _active(self, connection: Connection) -> _Active:
        meta = _pairs(connection.exec_driver_sql("SELECT name, value FROM vault_meta").all())
        if "vault_id" not in meta:
            raise VaultError(
                "the vault database is not initialized (run 'cmohub vault init')",
                code="VAULT_NOT_INITIALIZED",
            )
        return _Active(
            str(meta["vault_id"]),
            int(meta["index_version"]),
            int(meta["kek_version"]),
            int(meta["audit_version"]),
        )

    def _set_meta(self, connection: Connection, name: str, value: str) -> None:
        self._store.execute(
            connection, "UPDATE vault_meta SET value = ? WHERE name = ?", (value, name)
        )

    def _audit(self, connection: Connection, events: Sequence[AuditEvent], at: str) -> list[int]:
        return append_events(connection, self._store, events, at=at)

    def _audit_alone(self, events: Sequence[AuditEvent]) -> None:
        _, at = self._stamp()
        self._tx(lambda c: self._audit(c, events, at))

    def _prepare(
        self, identity: SubjectIdentity, therapy_event: str | None, position: int, what: str
    ) -> _Prepared:
        try:
            policy = self._systems.policy(identity.system)
            value = policy.normalize(identity.value.reveal())
            event = normalize_event(therapy_event) if therapy_event is not None else ""
        except VaultError as error:
            raise VaultError(
                error.message, code=error.code, where=_where(position, error, what)
            ) from None
        given = identity.demographics
        if given.family_name is None and given.given_name is None and given.birth_date is None:
            return (policy.system, value, event, _NO_DEMOGRAPHICS)
        return (policy.system, value, event, normalize_demographics(given))

    def _prepare_batch(self, items: Sequence[_Request], what: str) -> tuple[list[_Prepared], bool]:
        """:meth:`_prepare` of each item; and whether any of them carries demographics."""
        policy_of = self._systems.policy
        prepared: list[_Prepared] = []
        append = prepared.append
        with_demo = False
        # A batch's identities mostly share one system: its policy is looked up when it changes.
        last_system: str | None = None
        policy = None
        for position, item in enumerate(items):
            identity = item.identity
            try:
                if identity.system != last_system or policy is None:
                    policy = policy_of(identity.system)
                    last_system = identity.system
                value = policy.normalize(identity.value.reveal())
                event = item.therapy_event
                event = normalize_event(event) if event is not None else ""
            except VaultError as error:
                raise VaultError(
                    error.message, code=error.code, where=_where(position, error, what)
                ) from None
            given = identity.demographics
            if given.family_name is None and given.given_name is None and given.birth_date is None:
                append((policy.system, value, event, _NO_DEMOGRAPHICS))
            else:
                demographics = normalize_demographics(given)
                with_demo = with_demo or bool(demographics)
                append((policy.system, value, event, demographics))
        return prepared, with_demo

    def _event(
        self,
        kind: str,
        actor: Actor,
        *,
        outcome: str = "ok",
        coi: str | None = None,
        purpose: str | None = None,
        ticket: str | None = None,
        **details: Any,
    ) -> AuditEvent:
        return AuditEvent(
            event=kind,
            actor=actor.name,
            role=actor.role,
            outcome=outcome,
            feed=actor.feed,
            purpose=purpose,
            ticket=ticket,
            coi=coi,
            details=details,
        )

    # --- data keys ---------------------------------------------------------------------------

    def _sealing_key(self, needed: int) -> tuple[str, DataKey]:
        """The data key new values are sealed under; a new one is stored (committed) first."""
        with self._lock:
            if self._sealing is not None and self._sealing[2] + needed <= DATA_KEY_LIMIT:
                key_id, key, used = self._sealing
                self._sealing = (key_id, key, used + needed)
                return key_id, key
            key_id = uuid.uuid4().hex
            raw = generate_key()
            _, at = self._stamp()

            def work(connection: Connection) -> None:
                self._store.lock_for_batch(connection)
                active = self._active(connection)
                kek = self._keys.raw(KeyPurpose.KEK, active.kek_version)
                wrapped = wrap_key(kek, raw, context=_DATA_KEY_CONTEXT + key_id.encode())
                self._store.insert_rows(
                    connection,
                    "vault_data_key",
                    ("id", "kek_version", "wrapped", "created_at"),
                    [(key_id, active.kek_version, wrapped, at)],
                )

            self._tx(work)
            key = DataKey(raw)
            self._sealing = (key_id, key, needed)
            self._opening[key_id] = key
            return key_id, key

    def _opening_keys(self, connection: Connection, ids: Sequence[str]) -> dict[str, DataKey]:
        """Unwrapped data keys by ID (ConfigError if a KEK version is missing)."""
        missing = sorted({i for i in ids if i not in self._opening})
        if missing:
            rows = self._store.select_in(
                connection, "vault_data_key", "id, kek_version, wrapped", "id", missing
            )
            for key_id, kek_version, wrapped in rows:
                kek = self._keys.raw(KeyPurpose.KEK, int(kek_version))
                try:
                    raw = unwrap_key(
                        kek, bytes(wrapped), context=_DATA_KEY_CONTEXT + key_id.encode()
                    )
                except CryptoError:
                    raise CryptoError(
                        f"data key {key_id} does not unwrap with KEK version {kek_version}",
                        code="VAULT_DECRYPT_FAILED",
                    ) from None
                self._opening[key_id] = DataKey(raw)
        return {i: self._opening[i] for i in ids if i in self._opening}

    # --- lookups -----------------------------------------------------------------------------

    def _resolve_aliases(self, connection: Connection, subjects: list[bytes]) -> list[bytes]:
        if self._store.table_is_empty(connection, "vault_alias"):
            return subjects
        rows = self._store.select_in(
            connection, "vault_alias", "retired, survivor", "retired", sorted(set(subjects))
        )
        if not rows:
            return subjects
        aliases = {bytes(r): bytes(s) for r, s in rows}
        return [aliases.get(s, s) for s in subjects]

    def _find(self, connection: Connection, subjects: Iterable[bytes]) -> dict[_Pair, str]:
        """(subject, event) -> COI of every active row of these subjects."""
        found, _ = self._find_while(connection, subjects, lambda: None)
        return found

    def _find_while(
        self, connection: Connection, subjects: Iterable[bytes], work: Callable[[], T]
    ) -> tuple[dict[_Pair, str], T]:
        """:meth:`_find`, and ``work()`` done while PostgreSQL looks the subjects up."""
        rows, result = self._store.select_in_while(
            connection, "vault_coi", "subject, event, coi", "subject", subjects, work=work
        )
        # Both drivers return BLOB/bytea as bytes.
        return {subject + event: coi for subject, event, coi in rows}, result

    def _demographics(self, connection: Connection, cois: Sequence[str]) -> dict[str, _Demo]:
        rows = self._store.select_in(
            connection,
            "vault_coi",
            "coi, demo_family, demo_given, demo_birth, demo_version",
            "coi",
            set(cois),
        )
        return {
            coi: ((_bytes(family), _bytes(given), _bytes(birth)), version)
            for coi, family, given, birth, version in rows
        }

    # --- allocation --------------------------------------------------------------------------

    def _allocate(self, count: int, year: int) -> list[str]:
        """``count`` distinct random COIs (data form) of this vault's facility and ``year``."""
        return _draw_cois(self._rng, f"CH{self._fin}{year % 100:02d}", count)

    def _untaken_cois(self, connection: Connection, count: int, year: int) -> list[str]:
        """:meth:`_allocate`, with COIs the vault already holds replaced by fresh ones.

        For batches PostgreSQL copies: one taken COI fails the whole COPY (which then takes
        the slower ON CONFLICT path), and a vault already holding E COIs of a year meets
        about E / 22,000 of them in a batch of 100,000. A concurrent writer can still take one
        in between; that is what the fallback is for.
        """
        chosen: list[str] = []
        have: set[str] = set()
        for _attempt in range(_ALLOCATION_ATTEMPTS):
            need = count - len(chosen)
            if not need:
                break
            drawn = [coi for coi in self._allocate(need, year) if coi not in have][:need]
            taken = {
                row[0]
                for row in self._store.select_in(connection, "vault_coi", "coi", "coi", drawn)
            }
            fresh = [coi for coi in drawn if coi not in taken] if taken else drawn
            chosen += fresh
            have.update(fresh)
        if len(chosen) < count:
            raise VaultError(
                f"could not allocate unique COIs for facility {self._fin} after "
                f"{_ALLOCATION_ATTEMPTS} attempts (is the sequence space nearly full?)",
                code="VAULT_ALLOCATION_EXHAUSTED",
            )
        return chosen

    def _new_rows(
        self,
        cois: Sequence[str],
        pairs: Sequence[_Pair],
        items: Sequence[_Prepared],
        w: _Writing,
        *,
        origin: str,
        demographics: Sequence[_DemoRow] | None,
    ) -> Iterator[CoiBatch]:
        """vault_coi rows for new COIs, each identifier sealed with its COI as associated data.

        When PostgreSQL copies the batch, made ``_SEAL_CHUNK`` rows at a time as the store asks
        for them, so the server inserts one chunk while this process seals the next; else all
        at once (SQLite runs in this process: nothing to overlap).
        """
        key_id, key = w.sealing
        fmt = _PAYLOAD_FORMAT
        size = _SEAL_CHUNK if self._store.copies(len(cois)) else max(len(cois), 1)
        for start in range(0, len(cois), size):
            end = start + size
            chunk_cois = cois[start:end]
            payloads = [fmt + f"{s}\x00{v}\x00{e}".encode() for s, v, e, _ in items[start:end]]
            sealed = key.seal_many(payloads, [_COI_AAD + coi.encode() for coi in chunk_cois])
            chunk_pairs = pairs[start:end]
            yield CoiBatch(
                cois=chunk_cois,
                subjects=list(map(_subject_of, chunk_pairs)),
                events=list(map(_event_of, chunk_pairs)),
                sealed=sealed,
                index_version=w.index.version,
                data_key_id=key_id,
                origin=origin,
                created_at=w.at,
                created_by=w.actor.name,
                created_role=w.actor.role,
                created_feed=w.actor.feed,
                demographics=None if demographics is None else demographics[start:end],
            )

    @staticmethod
    def _demographic_hashes(
        cois: Sequence[str], items: Sequence[_Prepared], index: _IndexKey
    ) -> list[_DemoRow]:
        """(family, given, birth, key version) hashes for each new row; NULLs without any."""
        rows: list[_DemoRow] = []
        for coi, item in zip(cois, items, strict=True):
            given = item[3]
            if not given:
                rows.append((None, None, None, None))
                continue
            family, first_name, birth = (
                index.demographic(name, coi, given[name]) if name in given else None
                for name in DEMOGRAPHIC_FIELDS
            )
            rows.append((family, first_name, birth, index.version))
        return rows

    def _insert_new(
        self,
        connection: Connection,
        missing: Sequence[_Pair],
        first: Mapping[_Pair, int],
        prepared: Sequence[_Prepared],
        w: _Writing,
        *,
        with_demo: bool,
    ) -> tuple[dict[_Pair, str], set[_Pair], dict[str, _Demo]]:
        """Allocate and insert COIs for ``missing`` pairs (sorted; ``first`` gives where each
        appears first in ``prepared``); pairs another process won resolve to its COI; random
        collisions are retried with new COIs.

        Returns pair -> COI, the pairs this call inserted, and their demographic hashes.
        """
        resolved: dict[_Pair, str] = {}
        inserted: set[_Pair] = set()
        demo: dict[str, _Demo] = {}
        todo = list(missing)  # sorted: concurrent PostgreSQL inserts cannot deadlock
        for _attempt in range(_ALLOCATION_ATTEMPTS):
            # All of a batch's COIs in one draw: distinct from each other (chunks drawn apart
            # would repeat one now and then, and a repeat sends PostgreSQL's COPY to the
            # slower ON CONFLICT path).
            if self._store.copies(len(todo)):
                cois = self._untaken_cois(connection, len(todo), w.year)
            else:
                cois = self._allocate(len(todo), w.year)
            items = [prepared[first[pair]] for pair in todo]
            demographics = self._demographic_hashes(cois, items, w.index) if with_demo else None
            chunks = self._new_rows(
                cois, todo, items, w, origin="tokenize", demographics=demographics
            )
            lost = set(self._store.insert_cois(connection, chunks, len(todo)))
            kept: Sequence[int]
            if lost:
                kept = [i for i in range(len(todo)) if i not in lost]
                resolved.update((todo[i], cois[i]) for i in kept)
                inserted.update(todo[i] for i in kept)
            else:
                kept = range(len(todo))
                resolved.update(zip(todo, cois, strict=True))
                inserted.update(todo)
            if demographics is not None:
                for i in kept:
                    family, given, birth, version = demographics[i]
                    if version is not None:
                        demo[cois[i]] = ((family, given, birth), version)
            if not lost:
                return resolved, inserted, demo
            lost_pairs = [todo[i] for i in sorted(lost)]
            again = self._find(connection, list(map(_subject_of, lost_pairs)))
            todo = []
            for pair in lost_pairs:
                if pair in again:
                    resolved[pair] = again[pair]  # another process allocated it first
                else:
                    todo.append(pair)  # our random COI was taken: draw again
            if not todo:
                return resolved, inserted, demo
        raise VaultError(
            f"could not allocate unique COIs for facility {self._fin} after "
            f"{_ALLOCATION_ATTEMPTS} attempts (is the sequence space nearly full?)",
            code="VAULT_ALLOCATION_EXHAUSTED",
        )

    def _linkage(
        self,
        connection: Connection,
        *,
        prepared: Sequence[_Prepared],
        pairs: Sequence[_Pair],
        found: Mapping[_Pair, str],
        demo: dict[str, _Demo],
        index: _IndexKey,
    ) -> tuple[list[LinkageMismatch], int]:
        """Compare demographics with the stored keyed hashes; fill in fields not seen before."""
        mismatches: list[LinkageMismatch] = []
        unverifiable = 0
        fills: dict[str, tuple[Any, ...]] = {}
        for position, item in enumerate(prepared):
            given = item[3]
            if not given:
                continue
            coi = found[pairs[position]]
            hashes, version = demo.get(coi, ((None, None, None), None))
            try:
                key = index if version in (None, index.version) else self._keys.index(int(version))
            except ConfigError:
                unverifiable += 1  # the key version that made the hashes is gone
                continue
            stored = list(hashes)
            differing: list[str] = []
            changed = False
            for slot, name in enumerate(DEMOGRAPHIC_FIELDS):
                value = given.get(name)
                if value is None:
                    continue
                digest = key.demographic(name, coi, value)
                if stored[slot] is None:
                    stored[slot] = digest
                    changed = True
                elif stored[slot] != digest:
                    differing.append(name)
            if differing:
                mismatches.append(LinkageMismatch(position, _coi_from_text(coi), tuple(differing)))
            elif changed:
                demo[coi] = ((stored[0], stored[1], stored[2]), key.version)
                fills[coi] = (coi, *stored, key.version)
        if fills:
            self._store.update_many(
                connection,
                "vault_coi",
                "coi",
                ("demo_family", "demo_given", "demo_birth", "demo_version"),
                list(fills.values()),
            )
        return mismatches, unverifiable

    # --- initialization ----------------------------------------------------------------------

    def init(self, *, actor: Actor) -> InitResult:
        """Create (or upgrade) the schema and the keys; idempotent."""
        before, after = upgrade_schema(self._engine)
        provider = self._keys.provider
        created: list[str] = []
        for purpose in KeyPurpose:
            if not provider.versions(purpose):
                provider.create(purpose)
                created.append(purpose.value)
        newest = {p: provider.versions(p)[-1] for p in KeyPurpose}
        _, at = self._stamp()

        def work(connection: Connection) -> bool:
            existing = _pairs(
                connection.exec_driver_sql("SELECT name, value FROM vault_meta").all()
            )
            if existing:
                return False
            rows = [
                ("vault_id", uuid.uuid4().hex),
                ("index_version", str(newest[KeyPurpose.INDEX])),
                ("kek_version", str(newest[KeyPurpose.KEK])),
                ("audit_version", str(newest[KeyPurpose.AUDIT])),
                ("created_at", at),
            ]
            self._store.insert_rows(connection, "vault_meta", ("name", "value"), rows)
            self._audit(
                connection,
                [self._event("init", actor, schema=after, keys_created=created)],
                at,
            )
            return True

        fresh = bool(self._tx(work))
        # Every active key must load (present, private, well-formed) before we report success.
        active = self._tx(self._active, readonly=True)
        self._keys.raw(KeyPurpose.INDEX, active.index_version)
        self._keys.raw(KeyPurpose.KEK, active.kek_version)
        self._keys.raw(KeyPurpose.AUDIT, active.audit_version)
        if fresh:
            self.checkpoint()
        log.info("vault initialized=%s schema=%s keys_created=%s", fresh, after, created)
        return InitResult(fresh, before, after, tuple(created))

    # --- tokenize / lookup / verify ----------------------------------------------------------

    def tokenize(self, identity: SubjectIdentity, therapy_event: str, *, actor: Actor) -> Coi:
        """The COI of ``identity`` for ``therapy_event``, allocated on first sight."""
        return self.tokenize_many_detailed(
            [TokenizeRequest(identity, therapy_event)], actor=actor
        ).cois[0]

    def tokenize_many(self, requests: Sequence[TokenizeRequest], *, actor: Actor) -> list[Coi]:
        """The COI of each request (IdentityPort); one transaction for the batch."""
        return self.tokenize_many_detailed(requests, actor=actor).cois

    @_batched
    def tokenize_many_detailed(
        self, requests: Sequence[TokenizeRequest], *, actor: Actor
    ) -> TokenizeResult:
        """:meth:`tokenize_many` plus which COIs are new and any linkage mismatches."""
        if not requests:
            return TokenizeResult([], [], [])
        prepared, with_demo = self._prepare_batch(requests, "requests")
        sealing = self._sealing_key(len(prepared))
        now, at = self._stamp()

        def work(connection: Connection) -> tuple[TokenizeResult, int]:
            self._store.lock_for_batch(connection)
            active = self._active(connection)
            index = self._keys.index(active.index_version)
            subjects = self._resolve_aliases(connection, index.subjects(prepared))
            # The therapy events' digests are made while PostgreSQL looks the subjects up.
            found, events = self._find_while(connection, subjects, lambda: index.events(prepared))
            pairs = _pair_keys(subjects, events)
            texts = list(map(found.get, pairs))
            distinct = len(set(pairs))
            fresh: set[_Pair] = set()
            demo: dict[str, _Demo] = {}
            if None in texts:
                missing = [pair for pair in dict.fromkeys(pairs) if pair not in found]
                missing.sort()  # inserts walk the unique index in order
                # Where each pair appears first (the last write of the reversed walk wins).
                first = dict(zip(reversed(pairs), range(len(pairs) - 1, -1, -1), strict=True))
                writing = _Writing(index, sealing, actor, at, now.year)
                created, fresh, demo = self._insert_new(
                    connection, missing, first, prepared, writing, with_demo=with_demo
                )
                found.update(created)
                texts = list(map(found.__getitem__, pairs))
            mismatches: list[LinkageMismatch] = []
            unverifiable = 0
            if with_demo:
                wanted = {found[pairs[i]] for i, p in enumerate(prepared) if p[3]}
                demo.update(self._demographics(connection, sorted(wanted - demo.keys())))
                mismatches, unverifiable = self._linkage(
                    connection, prepared=prepared, pairs=pairs, found=found, demo=demo, index=index
                )
            cois = _cois_from_texts(cast("list[str]", texts))
            new = list(map(fresh.__contains__, pairs)) if fresh else [False] * len(pairs)
            details: dict[str, Any] = {
                "requests": len(prepared),
                "new": len(fresh),
                "existing": distinct - len(fresh),
            }
            if with_demo:
                details["linkage_mismatches"] = len(mismatches)
                if unverifiable:
                    details["linkage_unverifiable"] = unverifiable
            self._audit(connection, [self._event("tokenize", actor, **details)], at)
            return TokenizeResult(cois, new, mismatches), len(fresh)

        result: TokenizeResult
        result, new_count = self._tx(work)
        log.info(
            "tokenized %d requests (%d new COIs, %d linkage mismatches) for %s",
            len(prepared),
            new_count,
            len(result.linkage_mismatches),
            actor.feed or actor.name,
        )
        return result

    def lookup(self, identity: SubjectIdentity, therapy_event: str, *, actor: Actor) -> Coi | None:
        """The COI of ``identity`` for ``therapy_event``, or None; never allocates."""
        return self.lookup_many([TokenizeRequest(identity, therapy_event)], actor=actor)[0]

    @_batched
    def lookup_many(self, requests: Sequence[TokenizeRequest], *, actor: Actor) -> list[Coi | None]:
        if not requests:
            return []
        prepared, _ = self._prepare_batch(requests, "requests")
        _, at = self._stamp()

        def work(connection: Connection) -> list[Coi | None]:
            self._store.lock_for_batch(connection)
            index = self._keys.index(self._active(connection).index_version)
            subjects = self._resolve_aliases(connection, index.subjects(prepared))
            found, events = self._find_while(connection, subjects, lambda: index.events(prepared))
            pairs = _pair_keys(subjects, events)
            texts = list(map(found.get, pairs))
            known = iter(_cois_from_texts([t for t in texts if t is not None]))
            out: list[Coi | None] = [None if t is None else next(known) for t in texts]
            hits = len(out) - texts.count(None)
            self._audit(
                connection,
                [self._event("lookup", actor, requests=len(out), found=hits)],
                at,
            )
            return out

        result: list[Coi | None] = self._tx(work)
        return result

    def verify(self, coi: str, *, actor: Actor) -> CoiStatus:
        """Known / unknown / withdrawn for one COI (IdentifierError if it is malformed)."""
        return self.verify_many([coi], actor=actor)[0]

    @_batched
    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        """Known / unknown / withdrawn for each COI (IdentityPort); audited as one batch."""
        if not cois:
            return []
        texts = []
        for position, text in enumerate(cois):
            try:
                texts.append(str(parse_coi(str(text))))
            except IdentifierError as error:
                raise IdentifierError(
                    error.message, code=error.code, where=f"cois[{position}]"
                ) from None
        _, at = self._stamp()

        def work(connection: Connection) -> list[CoiStatus]:
            rows = self._store.select_in(
                connection, "vault_coi", "coi, status", "coi", sorted(set(texts))
            )
            status = {
                coi: CoiStatus.WITHDRAWN if s == "withdrawn" else CoiStatus.KNOWN for coi, s in rows
            }
            out = [status.get(t, CoiStatus.UNKNOWN) for t in texts]
            counts = {s.value: 0 for s in CoiStatus}
            for s in out:
                counts[s.value] += 1
            event = self._event(
                "verify",
                actor,
                requests=len(out),
                known=counts["known"],
                unknown=counts["unknown"],
                withdrawn=counts["withdrawn"],
            )
            self._audit(connection, [event], at)
            return out

        result: list[CoiStatus] = self._tx(work)
        return result

    # --- enrollment --------------------------------------------------------------------------

    @_batched
    def enroll_many(
        self, assignments: Sequence[EnrollmentAssignment], *, actor: Actor
    ) -> EnrollResult:
        """Adopt COIs issued by the sponsor's enrollment system (idempotent; all or nothing).

        A conflict — the COI already bound to another subject or therapy event, the subject
        and event already bound to another COI, or two assignments in the batch that disagree
        — enrolls nothing, is audited, and raises VaultError ``VAULT_ENROLL_CONFLICT``.
        """
        if not assignments:
            return EnrollResult(0, 0)
        prepared: list[_Prepared] = []
        cois: list[str] = []
        for position, a in enumerate(assignments):
            prepared.append(self._prepare(a.identity, a.therapy_event, position, "assignments"))
            try:
                cois.append(str(a.coi) if isinstance(a.coi, Coi) else str(parse_coi(a.coi)))
            except IdentifierError as error:
                raise IdentifierError(
                    error.message, code=error.code, where=f"assignments[{position}]"
                ) from None
        sealing = self._sealing_key(len(prepared))
        now, at = self._stamp()
        total = len(assignments)

        def conflict(position: int, reason: str) -> _Refusal:
            coi = cois[position]
            error = VaultError(
                f"assignment {position + 1} of {total}: {reason} (COI {coi}); nothing was enrolled",
                code="VAULT_ENROLL_CONFLICT",
                where=f"assignments[{position}]",
            )
            event = self._event(
                "enroll",
                actor,
                outcome="conflict",
                coi=coi,
                code="VAULT_ENROLL_CONFLICT",
                position=position,
                assignments=total,
                reason=reason,
            )
            return _Refusal(error, [event])

        def work(connection: Connection) -> EnrollResult:
            self._store.lock_for_batch(connection)
            index = self._keys.index(self._active(connection).index_version)
            writing = _Writing(index, sealing, actor, at, now.year)
            subjects = self._resolve_aliases(connection, index.subjects(prepared))
            pairs = _pair_keys(subjects, index.events(prepared))
            by_pair: dict[_Pair, str] = {}
            by_coi: dict[str, _Pair] = {}
            for position, (pair, coi) in enumerate(zip(pairs, cois, strict=True)):
                if by_pair.setdefault(pair, coi) != coi:
                    raise conflict(
                        position, "the batch gives this subject and therapy event two COIs"
                    )
                if by_coi.setdefault(coi, pair) != pair:
                    raise conflict(position, "the batch gives this COI to two subjects or events")
            found = self._find(connection, subjects)
            taken = {
                row[0]: row
                for row in self._store.select_in(
                    connection, "vault_coi", "coi, subject, event, status", "coi", sorted(by_coi)
                )
            }
            new: dict[str, int] = {}  # COI -> position of its first assignment
            already = 0
            for position, (pair, coi) in enumerate(zip(pairs, cois, strict=True)):
                if pair in found:
                    if found[pair] != coi:
                        raise conflict(
                            position, "this subject and therapy event already have another COI"
                        )
                    already += 1
                    continue
                if coi in taken:
                    reason = (
                        "this COI was withdrawn"
                        if taken[coi][3] == "withdrawn"
                        else "this COI is already bound to another subject or therapy event"
                    )
                    raise conflict(position, reason)
                new.setdefault(coi, position)
                found[pair] = coi
            # Sorted by (subject, event): concurrent PostgreSQL inserts cannot deadlock.
            order = sorted(new.values(), key=pairs.__getitem__)
            new_cois = [cois[i] for i in order]
            items = [prepared[i] for i in order]
            demographics = (
                self._demographic_hashes(new_cois, items, index)
                if any(item[3] for item in items)
                else None
            )
            chunks = self._new_rows(
                new_cois,
                [pairs[i] for i in order],
                items,
                writing,
                origin="enroll",
                demographics=demographics,
            )
            lost = self._store.insert_cois(connection, chunks, len(order))
            if lost:
                # Another process bound this COI or this pair in the meantime.
                position = order[min(lost)]
                raise conflict(position, "a concurrent run bound this COI or this subject first")
            enrolled = len(order)
            self._audit(
                connection,
                [
                    self._event(
                        "enroll", actor, assignments=total, enrolled=enrolled, already=already
                    )
                ],
                at,
            )
            return EnrollResult(enrolled, already)

        try:
            result: EnrollResult = self._tx(work)
        except _Refusal as refusal:
            self._audit_alone(refusal.events)
            raise refusal.error from None
        log.info("enrolled %d assignments (%d already known)", result.enrolled, result.already)
        return result

    # --- merges ------------------------------------------------------------------------------

    def merge(
        self, survivor: SubjectIdentity, retired: SubjectIdentity, *, actor: Actor, reason: str
    ) -> MergeResult:
        """Make ``retired`` resolve to ``survivor``'s subject (HL7 ADT^A40); audited.

        The retired identifier's COIs move to the survivor. Refused with
        ``VAULT_MERGE_CONFLICT`` when both hold a COI for the same therapy event, when the
        retired identifier was already merged elsewhere, or when the survivor was itself
        retired: a person must resolve those.
        """
        s_system, s_value, _, _ = self._prepare(survivor, None, 0, "survivor")
        r_system, r_value, _, _ = self._prepare(retired, None, 0, "retired")
        if (s_system, s_value) == (r_system, r_value):
            raise VaultError(
                "survivor and retired are the same identifier", code="VAULT_MERGE_INVALID"
            )
        reason_text = reason.strip() or None
        sealing = self._sealing_key(4)
        _, at = self._stamp()

        def refuse(message: str) -> _Refusal:
            error = VaultError(message, code="VAULT_MERGE_CONFLICT")
            event = self._event(
                "merge",
                actor,
                outcome="conflict",
                purpose=reason_text,
                code="VAULT_MERGE_CONFLICT",
                reason=message,
            )
            return _Refusal(error, [event])

        def work(connection: Connection) -> MergeResult:
            self._store.lock_for_batch(connection)
            active = self._active(connection)
            index = self._keys.index(active.index_version)
            s_blind = index.subject(s_system, s_value)
            r_blind = index.subject(r_system, r_value)
            aliases = {
                bytes(a): bytes(b)
                for a, b in self._store.select_in(
                    connection, "vault_alias", "retired, survivor", "retired", [s_blind, r_blind]
                )
            }
            if s_blind in aliases:
                raise refuse("the survivor identifier was itself retired by an earlier merge")
            if r_blind in aliases:
                if aliases[r_blind] != s_blind:
                    raise refuse("the retired identifier was already merged into another subject")
                self._audit(
                    connection,
                    [
                        self._event(
                            "merge", actor, outcome="already_merged", purpose=reason_text, moved=0
                        )
                    ],
                    at,
                )
                return MergeResult([], already_merged=True)
            rows = self._store.select_in(
                connection, "vault_coi", "subject, event, coi", "subject", [s_blind, r_blind]
            )
            survivor_events = {bytes(e): c for subj, e, c in rows if bytes(subj) == s_blind}
            moved = sorted(c for subj, e, c in rows if bytes(subj) == r_blind)
            for subj, ev, coi in rows:
                if bytes(subj) == r_blind and bytes(ev) in survivor_events:
                    raise refuse(
                        f"both identifiers hold a COI for the same therapy event "
                        f"({survivor_events[bytes(ev)]} and {coi})"
                    )
            self._store.execute(
                connection,
                "UPDATE vault_coi SET subject = ? WHERE subject = ?",
                (s_blind, r_blind),
            )
            key_id, key = sealing
            # Identifiers merged into the retired one earlier now resolve to the survivor too.
            chained = self._store.select_in(
                connection, "vault_alias", "id, data_key_id, sealed", "survivor", [r_blind]
            )
            opening = self._opening_keys(connection, [row[1] for row in chained])
            updates = []
            for alias_id, data_key_id, sealed in chained:
                plain = opening[data_key_id].open(bytes(sealed), _ALIAS_AAD + alias_id.encode())
                old_system, old_value, _, _ = _parse_payload(plain, 4)
                resealed = key.seal(
                    _alias_payload(old_system, old_value, s_system, s_value),
                    _ALIAS_AAD + alias_id.encode(),
                )
                updates.append((alias_id, s_blind, key_id, resealed))
            self._store.update_many(
                connection, "vault_alias", "id", ("survivor", "data_key_id", "sealed"), updates
            )
            alias_id = uuid.uuid4().hex
            sealed_alias = key.seal(
                _alias_payload(r_system, r_value, s_system, s_value),
                _ALIAS_AAD + alias_id.encode(),
            )
            self._store.insert_rows(
                connection,
                "vault_alias",
                (
                    "id",
                    "retired",
                    "survivor",
                    "index_version",
                    "data_key_id",
                    "sealed",
                    "created_at",
                    "created_by",
                ),
                [(alias_id, r_blind, s_blind, index.version, key_id, sealed_alias, at, actor.name)],
            )
            self._audit(
                connection,
                [
                    self._event(
                        "merge",
                        actor,
                        purpose=reason_text,
                        moved=len(moved),
                        cois=moved,
                        chained=len(updates),
                    )
                ],
                at,
            )
            return MergeResult([_coi_from_text(c) for c in moved])

        try:
            result: MergeResult = self._tx(work)
        except _Refusal as refusal:
            self._audit_alone(refusal.events)
            raise refusal.error from None
        log.info("merged identifiers: %d COIs moved to the survivor", len(result.moved))
        return result

    # --- re-identification and withdrawal ----------------------------------------------------

    def _may(self, actor: Actor) -> bool:
        return actor.role == PRIVACY_OFFICER and self._roles.grants(actor.name, PRIVACY_OFFICER)

    def reveal(
        self,
        coi: str,
        *,
        actor: Actor,
        purpose: str,
        ticket: str,
        refused: HubError | None = None,
    ) -> RevealedIdentity:
        """Re-identify one COI: privacy officers only, with a purpose and a ticket; audited."""
        return self.reveal_many(
            [coi], actor=actor, purpose=purpose, ticket=ticket, refused=refused
        )[0]

    @_batched
    def reveal_many(
        self,
        cois: Sequence[str],
        *,
        actor: Actor,
        purpose: str,
        ticket: str,
        refused: HubError | None = None,
    ) -> list[RevealedIdentity]:
        """Re-identify COIs (one audit event each, one transaction). All or nothing.

        ``refused``: the caller's own reason not to show the identifiers (the CLI's, when its
        output is not a terminal). It is recorded and raised like the vault's refusals, after
        them: an actor who may not re-identify is told that first.
        """
        purpose_text, ticket_text = (purpose or "").strip(), (ticket or "").strip()
        parsed: list[str | None] = []
        bad: list[tuple[int, IdentifierError]] = []
        for position, text in enumerate(cois):
            try:
                parsed.append(str(parse_coi(str(text))))
            except IdentifierError as error:
                parsed.append(None)
                bad.append((position, error))
        refusal: HubError | None = None
        if not self._may(actor):
            refusal = AccessDenied(
                f"actor {actor.name!r} (role {actor.role}) may not re-identify: only actors "
                "listed as privacy_officer in the roles file may",
                code="VAULT_ACCESS_DENIED",
            )
        elif not purpose_text or not ticket_text:
            refusal = AccessDenied(
                "re-identification needs a purpose and a ticket", code="VAULT_PURPOSE_REQUIRED"
            )
        elif bad:
            position, first = bad[0]
            refusal = IdentifierError(first.message, code=first.code, where=f"cois[{position}]")
        else:
            refusal = refused
        if refusal is not None:
            self._audit_alone(
                [
                    self._event(
                        "refuse",
                        actor,
                        outcome="refused",
                        coi=c,
                        purpose=purpose_text or None,
                        ticket=ticket_text or None,
                        operation="reveal",
                        code=refusal.code,
                    )
                    for c in (parsed or [None])
                ]
            )
            log.info("reveal refused (%s) for actor %s (audited)", refusal.code, actor.name)
            raise refusal
        texts = [c for c in parsed if c is not None]
        _, at = self._stamp()

        def work(connection: Connection) -> tuple[list[RevealedIdentity], HubError | None]:
            rows = {
                row[0]: row
                for row in self._store.select_in(
                    connection,
                    "vault_coi",
                    "coi, status, data_key_id, sealed, origin, created_at, created_by",
                    "coi",
                    sorted(set(texts)),
                )
            }
            events: list[AuditEvent] = []
            out: list[RevealedIdentity] = []
            failure: HubError | None = None
            key_ids = [r[2] for r in rows.values() if r[2] is not None]
            try:
                opening = self._opening_keys(connection, key_ids)
            except (ConfigError, CryptoError) as error:
                opening, failure = {}, error
            for coi in texts:
                row = rows.get(coi)
                outcome, code = "granted", None
                if row is None:
                    outcome, code = "unknown", "VAULT_COI_UNKNOWN"
                elif row[1] == "withdrawn":
                    outcome, code = "withdrawn", "VAULT_COI_WITHDRAWN"
                elif row[2] not in opening:
                    outcome, code = (
                        "decrypt_failed",
                        failure.code if failure else "VAULT_DECRYPT_FAILED",
                    )
                else:
                    try:
                        plain = opening[row[2]].open(bytes(row[3]), _COI_AAD + coi.encode())
                        system, value, event = _parse_payload(plain, 3)
                        out.append(
                            RevealedIdentity(
                                coi=_coi_from_text(coi),
                                identity=SubjectIdentity(system=system, value=Sensitive(value)),
                                therapy_event=event,
                                origin=row[4],
                                created_at=row[5],
                                created_by=row[6],
                            )
                        )
                    except (CryptoError, UnicodeDecodeError):
                        outcome, code = "decrypt_failed", "VAULT_DECRYPT_FAILED"
                details: dict[str, Any] = {"code": code} if code else {}
                events.append(
                    self._event(
                        "reveal",
                        actor,
                        outcome=outcome,
                        coi=coi,
                        purpose=purpose_text,
                        ticket=ticket_text,
                        **details,
                    )
                )
                if code and failure is None:
                    failure = _reveal_error(code, coi)
            self._audit(connection, events, at)
            return out, failure

        revealed, failure = self._tx(work)
        if failure is not None:
            log.info("reveal failed (%s) for actor %s (audited)", failure.code, actor.name)
            raise failure
        log.info("revealed %d COIs for actor %s (ticket recorded)", len(revealed), actor.name)
        return list(revealed)

    def withdraw(self, coi: str, *, actor: Actor, reason: str) -> WithdrawResult:
        """Consent withdrawn: destroy the sealed identifier and blind indexes; keep the COI."""
        text = str(parse_coi(str(coi)))
        reason_text = (reason or "").strip()
        if not self._may(actor):
            self._audit_alone(
                [
                    self._event(
                        "refuse",
                        actor,
                        outcome="refused",
                        coi=text,
                        purpose=reason_text or None,
                        operation="withdraw",
                        code="VAULT_ACCESS_DENIED",
                    )
                ]
            )
            raise AccessDenied(
                f"actor {actor.name!r} may not withdraw: only privacy officers may",
                code="VAULT_ACCESS_DENIED",
            )
        if not reason_text:
            raise VaultError("a withdrawal needs a reason", code="VAULT_REASON_REQUIRED")
        _, at = self._stamp()

        def work(connection: Connection) -> WithdrawResult | None:
            # Not while a rotation rewrites blind indexes (it would restore this row's).
            self._store.lock_for_batch(connection)
            row = self._store.execute(
                connection, "SELECT status, subject FROM vault_coi WHERE coi = ?", (text,)
            ).first()
            if row is None:
                self._audit(
                    connection,
                    [
                        self._event(
                            "withdraw",
                            actor,
                            outcome="unknown",
                            coi=text,
                            purpose=reason_text,
                            code="VAULT_COI_UNKNOWN",
                        )
                    ],
                    at,
                )
                return None
            if row[0] == "withdrawn":
                self._audit(
                    connection,
                    [
                        self._event(
                            "withdraw",
                            actor,
                            outcome="already_withdrawn",
                            coi=text,
                            purpose=reason_text,
                        )
                    ],
                    at,
                )
                return WithdrawResult(_coi_from_text(text), True)
            self._store.execute(
                connection,
                "UPDATE vault_coi SET subject = NULL, event = NULL, index_version = NULL, "
                "data_key_id = NULL, sealed = NULL, demo_family = NULL, demo_given = NULL, "
                "demo_birth = NULL, demo_version = NULL, status = 'withdrawn', withdrawn_at = ? "
                "WHERE coi = ?",
                (at, text),
            )
            subject = row[1]
            remaining = self._store.execute(
                connection, "SELECT 1 FROM vault_coi WHERE subject = ? LIMIT 1", (subject,)
            ).first()
            aliases_removed = 0
            if remaining is None and subject is not None:
                # The subject has no COI left: forget the identifiers merged into it as well.
                result = self._store.execute(
                    connection, "DELETE FROM vault_alias WHERE survivor = ?", (subject,)
                )
                aliases_removed = max(result.rowcount, 0)
            self._audit(
                connection,
                [
                    self._event(
                        "withdraw",
                        actor,
                        coi=text,
                        purpose=reason_text,
                        aliases_removed=aliases_removed,
                    )
                ],
                at,
            )
            return WithdrawResult(_coi_from_text(text), False)

        result: WithdrawResult | None = self._tx(work)
        if result is None:
            raise VaultError(f"COI {text} is not in this vault", code="VAULT_COI_UNKNOWN")
        if self.backend is Backend.SQLITE and not result.already_withdrawn:
            # Old pages may still sit in the write-ahead log: fold it in and truncate it.
            truncate_sqlite_wal(self._engine)
        log.info("withdrew COI %s", text)
        return result

    # --- rotation ----------------------------------------------------------------------------

    def _target_version(self, purpose: KeyPurpose, active: int) -> int:
        versions = self._keys.provider.versions(purpose)
        newest = versions[-1] if versions else 0
        target = newest if newest > active else self._keys.provider.create(purpose)
        self._keys.raw(purpose, target)  # present, private and well-formed before we start
        return target

    @_batched
    def rotate_index_key(self, *, actor: Actor) -> RotationResult:
        """Re-index every COI and alias under a new index key version. No COI changes."""
        current = self._tx(self._active, readonly=True)
        target = self._target_version(KeyPurpose.INDEX, current.index_version)
        new = self._keys.index(target)
        _, at = self._stamp()

        def work(connection: Connection) -> RotationResult:
            self._store.lock_for_rotation(connection)
            active = self._active(connection)
            if active.index_version >= target:
                return RotationResult(
                    KeyPurpose.INDEX, active.index_version, active.index_version, 0
                )
            alias_rows = connection.exec_driver_sql(
                "SELECT id, data_key_id, sealed FROM vault_alias"
            ).all()
            opening = self._opening_keys(connection, [r[1] for r in alias_rows])
            alias_updates = []
            alias_map: dict[bytes, bytes] = {}
            for alias_id, data_key_id, sealed in alias_rows:
                plain = opening[data_key_id].open(bytes(sealed), _ALIAS_AAD + alias_id.encode())
                rs, rv, ss, sv = _parse_payload(plain, 4)
                retired_blind, survivor_blind = new.subject(rs, rv), new.subject(ss, sv)
                alias_map[retired_blind] = survivor_blind
                alias_updates.append((alias_id, retired_blind, survivor_blind, target))
            rows = 0
            for page in self._pages(connection):
                opening = self._opening_keys(connection, [r[1] for r in page])
                updates = []
                for coi, data_key_id, sealed in page:
                    plain = opening[data_key_id].open(bytes(sealed), _COI_AAD + coi.encode())
                    system, value, event = _parse_payload(plain, 3)
                    subject = new.subject(system, value)
                    updates.append((coi, alias_map.get(subject, subject), new.event(event), target))
                self._store.update_many(
                    connection, "vault_coi", "coi", ("subject", "event", "index_version"), updates
                )
                rows += len(updates)
            self._store.update_many(
                connection,
                "vault_alias",
                "id",
                ("retired", "survivor", "index_version"),
                alias_updates,
            )
            self._set_meta(connection, "index_version", str(target))
            self._audit(
                connection,
                [
                    self._event(
                        "rotate",
                        actor,
                        key="index",
                        from_version=active.index_version,
                        to_version=target,
                        rows=rows,
                        aliases=len(alias_updates),
                    )
                ],
                at,
            )
            return RotationResult(
                KeyPurpose.INDEX, active.index_version, target, rows, len(alias_updates)
            )

        result: RotationResult = self._tx(work)
        self.checkpoint()
        log.info(
            "index key rotated v%d -> v%d: %d rows re-indexed",
            result.from_version,
            result.to_version,
            result.rows,
        )
        return result

    def _pages(self, connection: Connection) -> Iterator[list[tuple[Any, ...]]]:
        last = ""
        while True:
            page = [
                tuple(r)
                for r in self._store.execute(
                    connection,
                    "SELECT coi, data_key_id, sealed FROM vault_coi "
                    "WHERE status = 'active' AND coi > ? ORDER BY coi LIMIT ?",
                    (last, _ROTATION_PAGE),
                )
            ]
            if not page:
                return
            yield page
            last = page[-1][0]

    def rotate_kek(self, *, actor: Actor) -> RotationResult:
        """Re-wrap every data key under a new KEK version. Ciphertexts and COIs are unchanged."""
        current = self._tx(self._active, readonly=True)
        target = self._target_version(KeyPurpose.KEK, current.kek_version)
        new_kek = self._keys.raw(KeyPurpose.KEK, target)
        _, at = self._stamp()

        def work(connection: Connection) -> RotationResult:
            self._store.lock_for_rotation(connection)
            active = self._active(connection)
            if active.kek_version >= target:
                return RotationResult(KeyPurpose.KEK, active.kek_version, active.kek_version, 0)
            updates = []
            for key_id, kek_version, wrapped in connection.exec_driver_sql(
                "SELECT id, kek_version, wrapped FROM vault_data_key"
            ):
                context = _DATA_KEY_CONTEXT + key_id.encode()
                raw = unwrap_key(
                    self._keys.raw(KeyPurpose.KEK, int(kek_version)),
                    bytes(wrapped),
                    context=context,
                )
                updates.append((key_id, target, wrap_key(new_kek, raw, context=context)))
            self._store.update_many(
                connection, "vault_data_key", "id", ("kek_version", "wrapped"), updates
            )
            self._set_meta(connection, "kek_version", str(target))
            self._audit(
                connection,
                [
                    self._event(
                        "rotate",
                        actor,
                        key="kek",
                        from_version=active.kek_version,
                        to_version=target,
                        data_keys=len(updates),
                    )
                ],
                at,
            )
            return RotationResult(KeyPurpose.KEK, active.kek_version, target, len(updates))

        result: RotationResult = self._tx(work)
        self.checkpoint()
        log.info(
            "KEK rotated v%d -> v%d: %d data keys re-wrapped",
            result.from_version,
            result.to_version,
            result.rows,
        )
        return result

    def rotate_audit_key(self, *, actor: Actor) -> RotationResult:
        """Sign checkpoints from now on with a new audit key version (old ones stay valid)."""
        current = self._tx(self._active, readonly=True)
        target = self._target_version(KeyPurpose.AUDIT, current.audit_version)
        _, at = self._stamp()

        def work(connection: Connection) -> RotationResult:
            self._store.lock_for_rotation(connection)
            active = self._active(connection)
            if active.audit_version >= target:
                return RotationResult(
                    KeyPurpose.AUDIT, active.audit_version, active.audit_version, 0
                )
            self._set_meta(connection, "audit_version", str(target))
            self._audit(
                connection,
                [
                    self._event(
                        "rotate",
                        actor,
                        key="audit",
                        from_version=active.audit_version,
                        to_version=target,
                    )
                ],
                at,
            )
            return RotationResult(KeyPurpose.AUDIT, active.audit_version, target, 0)

        result: RotationResult = self._tx(work)
        self.checkpoint()
        return result

    # --- audit log ---------------------------------------------------------------------------

    def _public_keys(self) -> dict[int, bytes]:
        return {
            version: public_key_of(self._keys.raw(KeyPurpose.AUDIT, version))
            for version in self._keys.provider.versions(KeyPurpose.AUDIT)
        }

    def _checkpoints(self, connection: Connection, vault_id: str) -> list[Checkpoint]:
        return [
            Checkpoint(
                vault_id=vault_id,
                size=int(size),
                root=bytes(root).hex(),
                created_at=at,
                key_version=int(version),
                public_key=bytes(public).hex(),
                signature=bytes(signature).hex(),
            )
            for size, root, at, version, public, signature in connection.exec_driver_sql(
                "SELECT size, root, at, key_version, public_key, signature FROM vault_checkpoint "
                "ORDER BY size, id"
            )
        ]

    def _verify(
        self, connection: Connection, witnesses: Sequence[Checkpoint]
    ) -> tuple[AuditVerification, _Active]:
        active = self._active(connection)
        try:
            public_keys = self._public_keys()
        except ConfigError as error:
            reason = f"{error.code}: {error.message}"
            return AuditVerification(AuditStatus.UNVERIFIABLE, 0, 0, reason), active
        if any(w.vault_id != active.vault_id for w in witnesses):
            reason = "a witness checkpoint belongs to another vault"
            return AuditVerification(AuditStatus.UNVERIFIABLE, 0, 0, reason), active
        checkpoints = self._checkpoints(connection, active.vault_id) + list(witnesses)
        rows = connection.exec_driver_sql(
            _SELECT_AUDIT,
            execution_options={"stream_results": True, "yield_per": 10_000},
        )
        try:
            return verify_log(rows, checkpoints, public_keys=public_keys), active
        finally:
            rows.close()  # verification may stop early: close the server-side cursor now

    def verify_audit(self, *, witnesses: Sequence[Checkpoint] = ()) -> AuditVerification:
        """Check the whole audit log against its checkpoints (and external ``witnesses``)."""
        verification: AuditVerification
        verification, _ = self._tx(lambda c: self._verify(c, witnesses), readonly=True)
        return verification

    def checkpoint(self) -> Checkpoint:
        """Verify the log, then sign and store a checkpoint of its current size and root."""
        verification: AuditVerification
        active: _Active
        verification, active = self._tx(lambda c: self._verify(c, ()), readonly=True)
        size, root = verification.events, bytes.fromhex(verification.root)
        if not verification.intact:
            raise VaultError(
                f"the audit log does not verify, refusing to sign it: {verification.reason}",
                code="VAULT_AUDIT_TAMPERED",
            )
        _, at = self._stamp()
        checkpoint = sign_checkpoint(
            vault_id=active.vault_id,
            size=size,
            root=root,
            created_at=at,
            key_version=active.audit_version,
            seed=self._keys.raw(KeyPurpose.AUDIT, active.audit_version),
        )

        def work(connection: Connection) -> None:
            self._store.insert_rows(
                connection,
                "vault_checkpoint",
                ("size", "root", "at", "key_version", "public_key", "signature"),
                [
                    (
                        size,
                        root,
                        at,
                        active.audit_version,
                        bytes.fromhex(checkpoint.public_key),
                        bytes.fromhex(checkpoint.signature),
                    )
                ],
            )

        self._tx(work)
        return checkpoint

    def latest_checkpoint(self) -> Checkpoint | None:
        """The most recent signed checkpoint (what publish embeds in manifests), or None."""

        def work(connection: Connection) -> Checkpoint | None:
            active = self._active(connection)
            checkpoints = self._checkpoints(connection, active.vault_id)
            return checkpoints[-1] if checkpoints else None

        result: Checkpoint | None = self._tx(work, readonly=True)
        return result

    def audit_public_key(self) -> bytes:
        """The raw Ed25519 public key that signs this vault's checkpoints now."""
        active = self._tx(self._active, readonly=True)
        return public_key_of(self._keys.raw(KeyPurpose.AUDIT, active.audit_version))

    def audit_records(
        self, since: date, until: date | None = None, *, actor: Actor
    ) -> list[AuditRecord]:
        """Audit events from ``since`` (inclusive) to ``until`` (exclusive), UTC days.

        Recorded as an ``export`` event: who read the audit log, and which period.
        """
        start = since.isoformat()
        end = until.isoformat() if until is not None else "9999"
        _, at = self._stamp()

        def work(connection: Connection) -> list[AuditRecord]:
            rows = self._store.execute(
                connection,
                "SELECT seq, at, event, actor, role, feed, purpose, ticket, coi, outcome, details "
                "FROM vault_audit WHERE at >= ? AND at < ? ORDER BY seq",
                (start, end),
            ).all()
            records = [AuditRecord(*row) for row in rows]
            self._audit(
                connection,
                [
                    self._event(
                        "export",
                        actor,
                        purpose="audit report",
                        since=start,
                        until=None if until is None else end,
                        events=len(records),
                    )
                ],
                at,
            )
            return records

        result: list[AuditRecord] = self._tx(work)
        return result

    # --- backup ------------------------------------------------------------------------------

    def backup(self, path: str | os.PathLike[str], *, actor: Actor) -> BackupResult:
        """Write a consistent copy of an SQLite vault to the new file ``path``, checked.

        Recorded first (an ``export`` event, then a checkpoint, both in the copy). The copy is
        SQLite's online backup (pipelines may keep writing), opened again with this vault's
        keys before it gets its name: the audit log verifies up to that checkpoint, and every
        data key unwraps. The keys are not in it (see :mod:`cmohub.vault.backup`).
        PostgreSQL is backed up with its own tools: VAULT_BACKUP_UNSUPPORTED.
        """
        from cmohub.vault import backup  # noqa: PLC0415 - only backups need it

        if self._store.pg:
            raise ConfigError(
                "a PostgreSQL vault is backed up with PostgreSQL's own tools (pg_dump, base "
                "backups); keep the keys apart from those backups",
                code="VAULT_BACKUP_UNSUPPORTED",
            )
        target = Path(os.path.abspath(path))
        backup.check_target(target)
        event = self._event("export", actor, purpose=_BACKUP_PURPOSE, file=target.name)
        self._audit_alone([event])
        made = self.checkpoint()
        partial = backup.partial_path(target)
        raw = self._engine.raw_connection()
        try:
            backup.copy_database(cast("Any", raw).driver_connection, partial)
        finally:
            raw.close()
        try:
            checked = self._check_backup(partial, made)
            sha256 = backup.finish(partial)
            size = partial.stat().st_size
            backup.place(partial, target)
        except BaseException:
            backup.discard(partial)
            raise
        log.info(
            "vault backed up (%d audit events, checkpoint %d)", checked.audit_events, made.size
        )
        return BackupResult(
            path=str(target), size=size, sha256=sha256, checkpoint=made, checked=checked
        )

    def _check_backup(self, partial: Path, made: Checkpoint) -> CopyCheck:
        """:meth:`_check_copy` of the copy at ``partial``, its audit log verified against
        ``made`` too (so it holds at least the events ``made`` signs)."""
        copy = Vault(f"sqlite:///{partial}", self._keys.provider, fin=self._fin)
        try:
            return copy._check_copy([made], code="VAULT_BACKUP_FAILED")
        finally:
            copy.close()

    def _check_copy(self, witnesses: Sequence[Checkpoint], *, code: str) -> CopyCheck:
        """This vault (a copy being made or restored), once its schema is current, its audit
        log verifies (against ``witnesses`` too), every data key unwraps and the active index
        key is there; ``code`` otherwise (or VAULT_KEY_MISSING / the CryptoError of the key
        that is missing or fails)."""
        try:
            self.check_schema()
        except VaultError as error:
            raise VaultError(f"the copy is not usable: {error.message}", code=code) from None
        verification = self.verify_audit(witnesses=witnesses)
        if verification.status is AuditStatus.UNVERIFIABLE:
            raise ConfigError(
                f"the copy's audit log cannot be checked: {verification.reason} (the keys are "
                "not in a backup: put the key files, or the secrets, in place first)",
                code="VAULT_KEY_MISSING",
            )
        if not verification.intact:
            raise VaultError(
                f"the copy's audit log does not verify: {verification.reason}", code=code
            )
        status = self.status()

        def unwrap_all(connection: Connection) -> int:
            rows = connection.exec_driver_sql("SELECT id FROM vault_data_key")
            return len(self._opening_keys(connection, [row[0] for row in rows]))

        data_keys: int = self._tx(unwrap_all, readonly=True)  # CryptoError if one does not
        self._keys.index(status.index_version)  # ConfigError if the key is missing
        return CopyCheck.of(status, data_keys)

    # --- restore -----------------------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        backup_file: str | os.PathLike[str],
        database: str,
        keys: KeyProvider,
        *,
        actor: Actor,
        replace: bool = False,
        witnesses: Sequence[Checkpoint] = (),
        fin: str = DEFAULT_FIN,
        clock: Clock = utc_now,
    ) -> RestoreResult:
        """Make the SQLite vault at ``database`` the content of ``backup_file``, checked.

        The backup is copied (read-only: the file is never changed) next to the vault file
        and opened with ``keys``: its audit log must verify (and match each witness
        checkpoint it is long enough for), every data key unwrap, the index key be there.
        A vault already there is refused (VAULT_RESTORE_EXISTS) unless ``replace``; then it
        must not be open in any process (VAULT_RESTORE_IN_USE), must be the same vault if it
        can be read (VAULT_RESTORE_MISMATCH), and is moved aside, never deleted; the COIs it
        holds that the backup lacks are returned (their subjects' link is gone). The copy
        records a ``restore`` event and a checkpoint covering it, then takes the vault's name.
        Nothing changes when a check fails. PostgreSQL: VAULT_RESTORE_UNSUPPORTED.
        """
        from cmohub.vault import backup as files  # noqa: PLC0415 - only restores need it

        target = files.vault_file(database)
        source = Path(os.path.abspath(backup_file))
        sha256 = files.read_backup(source)
        present = files.occupied(target)
        if present and not replace:
            raise VaultError(
                "a vault is there already: restoring replaces it only when asked to "
                "(--replace moves it aside, it is kept)",
                code="VAULT_RESTORE_EXISTS",
                where=str(target),
            )
        made_folder = not target.parent.exists()
        try:  # a new machine: its CMOHUB_HOME may hold nothing but the keys yet
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise VaultError(
                f"the vault's folder cannot be made ({type(error).__name__})",
                code="VAULT_RESTORE_FAILED",
                where=str(target.parent),
            ) from None
        partial = files.partial_path(target)
        files.copy_backup(source, partial)
        aside: Path | None = None
        moved = False
        owned = ExitStack()
        try:
            copy = cls(f"sqlite:///{partial}", keys, fin=fin, clock=clock)
            try:
                checked, lacks = copy._check_restored(witnesses)
                current = files.identity_of(target) if present else None
                if current not in (None, checked.vault_id):
                    raise VaultError(
                        f"the backup is of vault {checked.vault_id}, the vault there is "
                        f"{current}: move that one away by hand if it is to go",
                        code="VAULT_RESTORE_MISMATCH",
                        where=str(target),
                    )
                replaced = None
                if present:
                    # From here on no vault connection opens the vault there (new ones wait
                    # until the restored file has its name), and it is changed (its journal
                    # mode) only as a restore would, until it is moved aside.
                    owned.enter_context(own_vault_file(target))
                    replaced = files.take_over(target, partial)
                stamp = clock().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
                details: dict[str, Any] = {"file": source.name, "sha256": sha256}
                details["events"] = checked.audit_events
                if replaced is not None:
                    aside = files.aside_path(target, stamp)
                    details["replaced"] = aside.name
                    if replaced.lost is not None:
                        details["lost_cois"] = len(replaced.lost)
                        after = replaced.events_after
                        details["replaced_events_after"] = "diverges" if after is None else after
                if lacks is not None:
                    details["witness_lacks"] = lacks
                copy._audit_alone(
                    [copy._event("restore", actor, purpose=_RESTORE_PURPOSE, **details)]
                )
                made = copy.checkpoint()
            finally:
                copy.close()
            files.finish(partial, kind="RESTORE")
            if aside is not None:
                files.move_aside(target, aside)
                moved = True
            else:
                files.discard(target)  # the empty file opening a missing vault leaves
            files.place(partial, target, kind="RESTORE")
        except BaseException:
            files.discard(partial)
            if aside is not None and moved and not target.exists():
                files.move_back(aside, target)
            if made_folder:
                with suppress(OSError):
                    target.parent.rmdir()  # only if still empty
            raise
        finally:
            owned.close()  # waiting connections now open the file that has the vault's name
        log.info("vault restored from a backup (%d audit events)", checked.audit_events)
        return RestoreResult(
            path=str(target),
            backup=str(source),
            backup_sha256=sha256,
            checkpoint=made,
            checked=checked,
            replaced=str(aside) if aside is not None else None,
            lost_cois=replaced.lost if replaced is not None else None,
            replaced_unreadable=replaced.unreadable if replaced is not None else "",
            replaced_events_after=replaced.events_after if replaced is not None else None,
            witness_lacks=lacks,
        )

    def _check_restored(self, witnesses: Sequence[Checkpoint]) -> tuple[CopyCheck, int | None]:
        """:meth:`_check_copy` of a backup being restored, against the witnesses it is long
        enough for; and how many events the longest other witness signs beyond it."""
        checked = self._check_copy((), code="VAULT_RESTORE_FAILED")
        if any(w.vault_id != checked.vault_id for w in witnesses):
            raise VaultError(
                f"a witness checkpoint belongs to another vault than the backup "
                f"({checked.vault_id})",
                code="VAULT_RESTORE_MISMATCH",
            )
        events = checked.audit_events
        covered = [w for w in witnesses if w.size <= events]
        if covered:
            verification = self.verify_audit(witnesses=covered)
            if not verification.intact:
                raise VaultError(
                    f"the backup does not match a witness checkpoint: {verification.reason}",
                    code="VAULT_RESTORE_FAILED",
                )
        beyond = [w.size - events for w in witnesses if w.size > events]
        return checked, max(beyond) if beyond else None

    # --- status ------------------------------------------------------------------------------

    def status(self) -> VaultStatus:
        """Key versions, counts and the last checkpoint (no identifiers)."""

        def work(connection: Connection) -> VaultStatus:
            active = self._active(connection)
            counts = _pairs(
                connection.exec_driver_sql(
                    "SELECT status, COUNT(*) FROM vault_coi GROUP BY status"
                ).all()
            )
            enrolled = connection.exec_driver_sql(
                "SELECT COUNT(*) FROM vault_coi WHERE origin = 'enroll' AND status = 'active'"
            ).scalar_one()
            by_index = _pairs(
                connection.exec_driver_sql(
                    "SELECT index_version, COUNT(*) FROM vault_coi WHERE status = 'active' "
                    "GROUP BY index_version"
                ).all()
            )
            by_kek = _pairs(
                connection.exec_driver_sql(
                    "SELECT kek_version, COUNT(*) FROM vault_data_key GROUP BY kek_version"
                ).all()
            )
            aliases = connection.exec_driver_sql("SELECT COUNT(*) FROM vault_alias").scalar_one()
            events = connection.exec_driver_sql("SELECT COUNT(*) FROM vault_audit").scalar_one()
            checkpoints = self._checkpoints(connection, active.vault_id)
            last_backup = self._last_event(connection, "export", _BACKUP_PURPOSE)
            last_restore = self._last_event(connection, "restore", _RESTORE_PURPOSE)
            revision = connection.exec_driver_sql(
                "SELECT version_num FROM vault_alembic_version"
            ).scalar_one()
            provider = self._keys.provider
            return VaultStatus(
                database=describe(self._engine),
                vault_id=active.vault_id,
                schema=str(revision),
                index_version=active.index_version,
                kek_version=active.kek_version,
                audit_version=active.audit_version,
                provider_versions={p.value: provider.versions(p) for p in KeyPurpose},
                cois_active=int(counts.get("active", 0)),
                cois_withdrawn=int(counts.get("withdrawn", 0)),
                cois_enrolled=int(enrolled),
                rows_by_index_version={int(k): int(v) for k, v in by_index.items()},
                data_keys_by_kek_version={int(k): int(v) for k, v in by_kek.items()},
                aliases=int(aliases),
                audit_events=int(events),
                last_checkpoint=checkpoints[-1] if checkpoints else None,
                last_backup=last_backup,
                last_restore=last_restore,
            )

        result: VaultStatus = self._tx(work, readonly=True)
        return result

    def _last_event(
        self, connection: Connection, event: str, purpose: str
    ) -> tuple[str, str] | None:
        """(time, file) of the newest ``event`` with ``purpose`` (backups and restores)."""
        row = self._store.execute(
            connection,
            "SELECT at, details FROM vault_audit WHERE event = ? AND purpose = ? "
            "ORDER BY seq DESC LIMIT 1",
            (event, purpose),
        ).first()
        if row is None:
            return None
        try:
            details = json.loads(row[1])
        except ValueError:
            details = {}
        name = details.get("file") if isinstance(details, dict) else None
        return str(row[0]), str(name or "")


def _alias_payload(retired_system: str, retired_value: str, system: str, value: str) -> bytes:
    return _PAYLOAD_FORMAT + f"{retired_system}\x00{retired_value}\x00{system}\x00{value}".encode()


def _reveal_error(code: str, coi: str) -> HubError:
    if code == "VAULT_COI_UNKNOWN":
        return VaultError(f"COI {coi} is not in this vault", code=code)
    if code == "VAULT_COI_WITHDRAWN":
        return VaultError(
            f"COI {coi} was withdrawn (consent withdrawn): its identifier no longer exists",
            code=code,
        )
    return CryptoError(
        f"the identifier of COI {coi} failed authentication: nothing is shown "
        "(the record or its key was altered or is missing)",
        code="VAULT_DECRYPT_FAILED",
    )


__all__ = ["DEFAULT_FIN", "Vault"]
