"""The vault's database: engine, transactions, error translation, migrations, batched SQL.

SQLite (embedded default) and PostgreSQL (production) through SQLAlchemy Core. Everything that
runs once per identity is batched: lookups are ``IN (...)`` chunks on SQLite and
``= ANY(array)`` with binary array parameters on PostgreSQL; new COIs arrive column by column
(:class:`CoiBatch`, what a batch shares given once) and become one ``executemany`` of plain
tuples on SQLite, and one binary ``COPY`` straight into ``vault_coi`` on PostgreSQL (small
batches: one ``INSERT ... SELECT FROM unnest(arrays)``); a batch is one transaction.

Binding costs on SQLite: Python's sqlite3 binds ``int``, ``float``, ``str`` and ``bytearray``
directly, but sends ``bytes`` and ``None`` through its adapter registry first (a tuple, a dict
lookup and two attribute probes: about half a microsecond each). So blobs are bound as
``bytearray`` (stored as the same BLOB) and columns that a batch leaves NULL are left out of
the INSERT rather than bound as ``None``; that halves the cost of inserting a row.

Concurrency:

* SQLite: every writing transaction starts with ``BEGIN IMMEDIATE`` (the database's write
  lock is taken before the first read, so a read-then-insert cannot interleave with another
  process); a busy database is waited for up to 30 s, then reported as StoreUnavailable.
  Each connection also holds a shared ``flock`` on the vault file (:func:`share_vault_file`;
  SQLite's own locks are ``fcntl`` locks, which ``flock`` does not touch). A restore holds it
  exclusively (:func:`own_vault_file`) from its in-use check until the restored file has the
  vault's name, so no connection opens the vault being replaced meanwhile: a new one waits
  (up to 30 s, then ``VAULT_RESTORING``, Transient) and then opens the restored file.
* PostgreSQL: new COIs are copied into ``vault_coi`` inside a savepoint; if any row meets a
  unique constraint (another process allocated the same subject and event, or drew the same
  random COI, committed or not: COPY waits for it like an INSERT does), the savepoint is
  rolled back and the batch goes through ``INSERT ... ON CONFLICT DO NOTHING``; the caller
  re-reads what it lost. Rows are written sorted by (subject, event), so concurrent batches
  take the unique index's locks in the same order;
  key rotation holds an exclusive transaction-level advisory lock that batches take shared;
  the audit log's head is serialized by a second advisory lock taken last in a transaction.
  Deadlocks and serialization failures are retried (a few times) before giving up.

Errors: a database that cannot be reached, is locked or drops the connection is
:class:`~cmohub.errors.StoreUnavailable` (``VAULT_STORE_UNAVAILABLE``, Transient: Airflow
retries); missing tables are ``VAULT_NOT_INITIALIZED``; an older schema is
``VAULT_SCHEMA_OUTDATED``; an unsupported URL is ``VAULT_URL_UNSUPPORTED``. Engines are created
with ``hide_parameters=True``: SQL parameters (blind indexes, ciphertexts) never appear in
exception text or logs, and no plaintext identifier is ever a parameter.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cache
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import pq
from psycopg.adapt import Dumper
from psycopg.types.string import BytesBinaryDumper
from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import URL, Connection, CursorResult, Engine, make_url
from sqlalchemy.pool import StaticPool

from cmohub.errors import ConfigError, StoreUnavailable, VaultError
from cmohub.vault.schema import VERSION_TABLE, metadata

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_S = 30.0
#: How long a new SQLite connection waits for a restore to end (then VAULT_RESTORING).
RESTORE_WAIT_S = SQLITE_BUSY_TIMEOUT_S
_SQLITE_CHUNK = 30_000  # below SQLite's default limit of 32,766 bound parameters
_PG_CHUNK = 20_000
_PG_COPY_FROM = 500  # rows; smaller batches use one INSERT ... SELECT FROM unnest(arrays)
_PG_COPY_TYPES = {"text": "text", "bytea": "bytea", "integer": "int4"}
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_NOT_INITIALIZED_SQLSTATES = frozenset({"42P01", "42703"})  # undefined table / column
_ROTATION_LOCK = 0x636D_6F68_7562_0001  # "cmohub" + 1
_AUDIT_LOCK = 0x636D_6F68_7562_0002
_MIGRATION_LOCK = 0x636D_6F68_7562_0003

_PG_TYPES = {
    "coi": "text",
    "subject": "bytea",
    "event": "bytea",
    "index_version": "integer",
    "data_key_id": "text",
    "sealed": "bytea",
    "demo_family": "bytea",
    "demo_given": "bytea",
    "demo_birth": "bytea",
    "demo_version": "integer",
    "status": "text",
    "origin": "text",
    "created_at": "text",
    "created_by": "text",
    "created_role": "text",
    "created_feed": "text",
    "retired": "bytea",
    "survivor": "bytea",
    "id": "text",
    "kek_version": "integer",
    "wrapped": "bytea",
}


class Backend(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class _Retry(Exception):
    """A PostgreSQL deadlock or serialization failure: run the transaction again."""


# --- engine ----------------------------------------------------------------------------------


def _sqlite_file(database: str) -> None:
    # The vault file holds blind indexes and ciphertexts: create it readable by its owner only.
    path = Path(database).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)


def parse_vault_url(url: str) -> URL:
    """The parsed vault URL (VAULT_URL_UNSUPPORTED if it is not a database URL)."""
    try:
        return make_url(url)
    except exc.ArgumentError:
        raise ConfigError(
            "the vault URL is not a valid database URL", code="VAULT_URL_UNSUPPORTED"
        ) from None


def sqlite_database(parsed: URL) -> str | None:
    """The file of an SQLite vault URL; None for an in-memory one or another database."""
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return str(parsed.database)


def create_vault_engine(url: str) -> Engine:
    """An engine for a vault URL: ``sqlite:///path``, ``sqlite://`` (memory), ``postgresql://``."""
    parsed = parse_vault_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        memory = sqlite_database(parsed) is None
        if memory:
            engine = create_engine(
                "sqlite://",
                hide_parameters=True,
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
            )
        else:
            assert parsed.database is not None
            _sqlite_file(parsed.database)
            engine = create_engine(
                parsed.set(drivername="sqlite+pysqlite"),
                hide_parameters=True,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
            )
        _configure_sqlite(engine, memory=memory)
        return engine
    if backend == "postgresql":
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            hide_parameters=True,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 10, "application_name": "cmohub-vault"},
        )
    raise ConfigError(
        f"vault databases are SQLite or PostgreSQL, not {backend}", code="VAULT_URL_UNSUPPORTED"
    )


def share_vault_file(path: str, *, wait_seconds: float) -> int:
    """A descriptor of the vault file ``path`` holding a shared ``flock`` on it, taken while
    no restore owns the file (:func:`own_vault_file`); waits up to ``wait_seconds`` for a
    restore to end, then StoreUnavailable (``VAULT_RESTORING``)."""
    deadline = time.monotonic() + wait_seconds
    while (fd := _try_share(path)) is None:
        if time.monotonic() >= deadline:
            raise StoreUnavailable(
                f"the vault is being restored (waited {wait_seconds:.0f}s); retry later",
                code="VAULT_RESTORING",
                where=path,
            )
        time.sleep(0.05)
    return fd


def _try_share(path: str) -> int | None:
    """One try of :func:`share_vault_file`: None while a restore owns the file, or between
    its moving the old vault aside and naming the new one. The lock is kept only if ``path``
    still names the locked file (a restore that ended meanwhile has put another there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    kept = False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        held, there = os.fstat(fd), os.stat(path)
        kept = (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)
    except (BlockingIOError, FileNotFoundError):
        pass
    finally:
        if not kept:
            os.close(fd)
    return fd if kept else None


@contextmanager
def own_vault_file(path: Path) -> Iterator[None]:
    """Hold the vault file ``path`` exclusively (``flock``) for a block: refused
    (``VAULT_RESTORE_IN_USE``) while any vault connection has it open; while held, new
    connections wait (:func:`share_vault_file`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # only a journal is there: no connection can hold it
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise vault_in_use(path) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def vault_in_use(path: Path) -> VaultError:
    return VaultError(
        "the vault is open in another process (a running DAG, worker or command): "
        "stop them, then restore",
        code="VAULT_RESTORE_IN_USE",
        where=str(path),
    )


def _configure_sqlite(engine: Engine, *, memory: bool) -> None:
    if not memory:

        @event.listens_for(engine, "do_connect")
        def _on_do_connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
            fd = share_vault_file(str(engine.url.database), wait_seconds=RESTORE_WAIT_S)
            try:
                connection = dialect.connect(*cargs, **cparams)
            except BaseException:
                os.close(fd)
                raise
            record.info["cmohub_vault_file"] = fd
            return connection

        @event.listens_for(engine, "close")
        def _on_close(_dbapi_connection: Any, record: Any) -> None:
            fd = record.info.pop("cmohub_vault_file", None)
            if fd is not None:
                os.close(fd)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: transactions are begun explicitly below, so that a
        # writing transaction holds the write lock from its first statement.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a COI handed to a pipeline survives a power cut (one fsync per batch).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Withdrawal and re-indexing overwrite freed content instead of leaving it on disk.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        readonly = connection.get_execution_options().get("cmohub_readonly", False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def backend_of(engine: Engine) -> Backend:
    return Backend(engine.dialect.name)


def describe(engine: Engine) -> str:
    """The engine's URL with any password hidden."""
    return engine.url.render_as_string(hide_password=True)


# --- errors and transactions -----------------------------------------------------------------


def _sqlstate(error: exc.DBAPIError) -> str | None:
    state = getattr(error.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


@contextmanager
def store_errors() -> Iterator[None]:
    """Translate database errors into the hub's error tree (never echoing SQL parameters)."""
    try:
        yield
    except exc.DBAPIError as error:
        state = _sqlstate(error)
        kind = type(error.orig).__name__ if error.orig is not None else type(error).__name__
        text = str(error.orig) if isinstance(error.orig, sqlite3.Error) else ""
        if state in _RETRY_SQLSTATES:
            raise _Retry from error
        if (
            state in _NOT_INITIALIZED_SQLSTATES
            or "no such table" in text
            or "no such column" in text
        ):
            raise VaultError(
                "the vault database has no vault schema (run 'cmohub vault init')",
                code="VAULT_NOT_INITIALIZED",
            ) from None
        if isinstance(error, exc.IntegrityError):
            raise VaultError(
                f"the vault database refused a write ({kind})", code="VAULT_STORE_CONFLICT"
            ) from None
        if (
            isinstance(error, (exc.OperationalError, exc.InterfaceError))
            or error.connection_invalidated
        ):
            raise StoreUnavailable(
                f"the vault database is unavailable ({kind}); retry later",
                code="VAULT_STORE_UNAVAILABLE",
            ) from None
        raise VaultError(f"the vault database failed ({kind})", code="VAULT_STORE_ERROR") from None
    except exc.TimeoutError:
        raise StoreUnavailable(
            "no vault database connection became free in time", code="VAULT_STORE_UNAVAILABLE"
        ) from None


@contextmanager
def _driver_errors(
    base: type[Exception], operational: type[Exception], integrity: type[Exception]
) -> Iterator[None]:
    """A DB-API driver's errors raised outside SQLAlchemy (COPY, batched selects) become
    SQLAlchemy's, then ours (:func:`store_errors`)."""
    try:
        yield
    except base as error:
        wrapper = (
            exc.OperationalError
            if isinstance(error, operational)
            else exc.IntegrityError
            if isinstance(error, integrity)
            else exc.DatabaseError
        )
        raise wrapper("(driver)", None, error) from error


def pg_errors() -> AbstractContextManager[None]:
    return _driver_errors(psycopg.Error, psycopg.OperationalError, psycopg.IntegrityError)


def sqlite_errors() -> AbstractContextManager[None]:
    return _driver_errors(sqlite3.Error, sqlite3.OperationalError, sqlite3.IntegrityError)


def run_transaction(
    engine: Engine, work: Callable[[Connection], T], *, readonly: bool = False, attempts: int = 5
) -> T:
    """Run ``work`` in one transaction, retrying PostgreSQL deadlocks and serialization failures."""
    for attempt in range(attempts):
        try:
            with store_errors(), engine.connect() as plain:
                connection = plain.execution_options(cmohub_readonly=True) if readonly else plain
                with connection.begin():
                    return work(connection)
        except _Retry:
            time.sleep(0.01 * (2**attempt))
    raise StoreUnavailable(
        "the vault database kept reporting conflicts; retry later", code="VAULT_STORE_UNAVAILABLE"
    )


def truncate_sqlite_wal(engine: Engine) -> None:
    """Fold SQLite's write-ahead log into the database file and truncate it."""
    with store_errors(), engine.connect() as connection:
        # The driver connection is in autocommit mode: the pragma runs outside a transaction.
        connection.connection.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]


# --- migrations ------------------------------------------------------------------------------


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "cmohub.vault:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def schema_head() -> str:
    """The newest schema revision this version of cmohub knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def schema_revision(connection: Connection) -> str | None:
    """The schema revision of the database (None: no vault schema)."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade_schema(engine: Engine) -> tuple[str | None, str]:
    """Create or upgrade the vault schema; return (revision before, revision after)."""

    def work(connection: Connection) -> tuple[str | None, str]:
        if backend_of(engine) is Backend.POSTGRESQL:
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        before = schema_revision(connection)
        if before != schema_head():
            command.upgrade(_alembic_config(connection), "head")
        return before, schema_head()

    return run_transaction(engine, work)


def check_schema(engine: Engine) -> None:
    """Raise VAULT_NOT_INITIALIZED or VAULT_SCHEMA_OUTDATED unless the schema is current."""
    revision = run_transaction(engine, schema_revision, readonly=True)
    if revision is None:
        raise VaultError(
            f"no vault in {describe(engine)} (run 'cmohub vault init')",
            code="VAULT_NOT_INITIALIZED",
        )
    if revision != schema_head():
        raise VaultError(
            f"the vault schema is at revision {revision}, this cmohub needs {schema_head()} "
            "(run 'cmohub vault init' to upgrade)",
            code="VAULT_SCHEMA_OUTDATED",
        )


# --- batched statements ----------------------------------------------------------------------


_NAME = re.compile(r"[a-z_]+")


def _names(*parts: str) -> None:
    # Table and column names are interpolated into SQL (values never are): allow only the
    # lower-case identifiers of our own schema.
    for part in parts:
        for name in part.replace(",", " ").split():
            if not _NAME.fullmatch(name) or (
                name not in metadata.tables
                and not any(name in t.columns for t in metadata.tables.values())
            ):
                raise ValueError(f"not a vault table or column: {name!r}")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_BYTEA_OID, _TEXT_OID = 17, 25
_ARRAY_HEADER = struct.Struct(">iiIii")  # dimensions, has NULLs, element type, length, lower bound


def set_copy_types(cursor: Any, copy: Any, types: Sequence[str]) -> None:
    """``copy.set_types(types)``, with bytea values dumped by psycopg's C dumper.

    ``set_types`` takes the dumper registered last for each type's OID; for bytea that is
    psycopg.dbapi20's ``Binary`` dumper, a Python subclass: one Python call per value, 15-30%
    of a binary COPY's client time for vault rows. Registered on the cursor only (its own
    copy of the connection's adapters); psycopg swaps in its C implementation when present.
    """
    cursor.adapters.register_dumper(bytes, BytesBinaryDumper)
    copy.set_types(list(types))


class _ByteaArray:
    """A bytea[] already in PostgreSQL's binary wire form (see :func:`_binary_array`)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class _TextArray(_ByteaArray):
    """A text[] already in PostgreSQL's binary wire form."""

    __slots__ = ()


class _ByteaArrayDumper(Dumper):
    format = pq.Format.BINARY
    oid = 1001  # bytea[]

    def dump(self, obj: Any) -> bytes:
        payload: bytes = obj.payload
        return payload


class _TextArrayDumper(_ByteaArrayDumper):
    oid = 1009  # text[]


def _binary_array(values: Sequence[bytes], element_oid: int) -> bytes:
    """A one-dimensional array in binary (the format of PostgreSQL's array_send), joined in
    C: psycopg's own list dumper loops in Python, 0.4 us per element of a batch's keys."""
    sizes = set(map(len, values))
    if len(sizes) == 1:
        mark = struct.pack(">i", sizes.pop())
        body = mark + mark.join(values)
    else:
        body = b"".join(struct.pack(">i", len(value)) + value for value in values)
    return _ARRAY_HEADER.pack(1, 0, element_oid, len(values), 1) + body


def _pg_array(keys: Sequence[Any]) -> Any:
    """Keys of one column as a binary array parameter (bytes or text; anything else as is)."""
    if isinstance(keys[0], bytes):
        return _ByteaArray(_binary_array(keys, _BYTEA_OID))
    if isinstance(keys[0], str):
        return _TextArray(_binary_array([key.encode() for key in keys], _TEXT_OID))
    return list(keys)


def _nothing() -> None:
    return None


_Demographics = tuple[bytes | None, bytes | None, bytes | None, int | None]


@dataclass(frozen=True, slots=True)
class CoiBatch:
    """New ``vault_coi`` rows, column by column; what every row of a batch shares is given once.

    ``demographics`` holds (demo_family, demo_given, demo_birth, demo_version) per row, or is
    None when no row of the batch has any (the columns stay NULL).
    """

    cois: Sequence[str]
    subjects: Sequence[bytes]
    events: Sequence[bytes]
    sealed: Sequence[bytes]
    index_version: int
    data_key_id: str
    origin: str
    created_at: str
    created_by: str
    created_role: str
    created_feed: str | None
    demographics: Sequence[_Demographics] | None = None

    def __len__(self) -> int:
        return len(self.cois)

    @classmethod
    def concat(cls, batches: Sequence[CoiBatch]) -> CoiBatch:
        """One batch of the rows of ``batches`` (which share everything but their rows)."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        demographics = (
            None
            if first.demographics is None
            else [row for b in batches for row in b.demographics or ()]
        )
        return replace(
            first,
            cois=[c for b in batches for c in b.cois],
            subjects=[s for b in batches for s in b.subjects],
            events=[e for b in batches for e in b.events],
            sealed=[s for b in batches for s in b.sealed],
            demographics=demographics,
        )

    def columns(
        self, blob: Callable[[bytes], Any] | None = None
    ) -> list[tuple[str, Iterable[Any]]]:
        """(column, values) pairs; constants repeat; ``blob`` converts the per-row blobs."""

        def blobs(values: Sequence[bytes]) -> Iterable[Any]:
            return values if blob is None else map(blob, values)

        out: list[tuple[str, Iterable[Any]]] = [
            ("coi", self.cois),
            ("subject", blobs(self.subjects)),
            ("event", blobs(self.events)),
            ("sealed", blobs(self.sealed)),
            ("index_version", repeat(self.index_version)),
            ("data_key_id", repeat(self.data_key_id)),
            ("status", repeat("active")),
            ("origin", repeat(self.origin)),
            ("created_at", repeat(self.created_at)),
            ("created_by", repeat(self.created_by)),
            ("created_role", repeat(self.created_role)),
        ]
        if self.created_feed is not None:
            out.append(("created_feed", repeat(self.created_feed)))
        if self.demographics is not None:
            family, given, birth, version = zip(*self.demographics, strict=True)
            out += [
                ("demo_family", family),
                ("demo_given", given),
                ("demo_birth", birth),
                ("demo_version", version),
            ]
        return out

    def rows(
        self, blob: Callable[[bytes], Any] | None = None
    ) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """Column names and an iterator of row tuples (built by ``zip``, not per row in Python)."""
        columns = self.columns(blob)
        # Not strict: the constant columns repeat without end; the COIs set the length.
        return [name for name, _ in columns], zip(*(v for _, v in columns), strict=False)


class Store:
    """Dialect-specific batched statements on a connection inside a transaction."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.pg = backend is Backend.POSTGRESQL

    # locks (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers)

    def lock_for_batch(self, connection: Connection) -> None:
        if self.pg:
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock_shared({_ROTATION_LOCK})")

    def lock_for_rotation(self, connection: Connection) -> None:
        if self.pg:
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ROTATION_LOCK})")

    def lock_audit(self, connection: Connection) -> None:
        if self.pg:
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_AUDIT_LOCK})")

    # selects by a list of keys

    def select_in(
        self,
        connection: Connection,
        table: str,
        columns: str,
        key: str,
        keys: Iterable[Any],
    ) -> list[Any]:
        """``SELECT columns FROM table WHERE key IN keys``, batched; rows are plain tuples.

        Keys are de-duplicated; for SQLite they are sorted too (it builds its IN-list index
        from sorted keys and walks its own index in order: a third less time for 100,000
        subjects, sort included); PostgreSQL hashes the array itself. The driver's own cursor
        fetches the rows (inside the connection's transaction): SQLAlchemy would wrap each
        one in a Row, and PostgreSQL sends them in binary, so bytea needs no hex decoding.
        """
        rows, _ = self.select_in_while(connection, table, columns, key, keys, work=_nothing)
        return rows

    def select_in_while(
        self,
        connection: Connection,
        table: str,
        columns: str,
        key: str,
        keys: Iterable[Any],
        *,
        work: Callable[[], T],
    ) -> tuple[list[Any], T]:
        """:meth:`select_in`, and ``work()`` done while the database computes it.

        PostgreSQL gets every chunk's query first (pipeline mode: sent without waiting), so
        the server looks keys up while this process runs ``work``; then the rows are read.
        SQLite runs in this process: the select, then ``work``.
        """
        _names(table, columns, key)
        rows: list[Any] = []
        # dict.fromkeys, not set: it keeps the keys in the order they were made (their order
        # in memory), which makes SQLite's sort below about twice as fast as sorting a set.
        ordered = list(dict.fromkeys(keys))
        if not self.pg:
            ordered.sort()
        if not ordered:
            return rows, work()
        # Keys of one column are all blobs or all text.
        blobs = isinstance(ordered[0], bytes)
        driver: Any = connection.connection.driver_connection
        if self.pg:
            # %b: the array goes over in binary (text arrays of bytea are escaped per byte).
            sql = f"SELECT {columns} FROM {table} WHERE {key} = ANY(%b)"  # noqa: S608 - schema names only (_names)
            params = [(_pg_array(chunk),) for chunk in _chunks(ordered, _PG_CHUNK)]
            driver.adapters.register_dumper(_ByteaArray, _ByteaArrayDumper)
            driver.adapters.register_dumper(_TextArray, _TextArrayDumper)
            with pg_errors(), driver.pipeline():
                cursors = []
                for param in params:
                    cursor = driver.cursor()
                    cursor.execute(sql, param, binary=True)
                    cursors.append(cursor)
                result = work()
                for cursor in cursors:
                    rows.extend(cursor.fetchall())
                    cursor.close()
            return rows, result
        cursor = driver.cursor()
        try:
            with sqlite_errors():
                for chunk in _chunks(ordered, _SQLITE_CHUNK):
                    marks = ",".join("?" * len(chunk))
                    sql = f"SELECT {columns} FROM {table} WHERE {key} IN ({marks})"  # noqa: S608 - schema names only (_names)
                    # Blobs bind as bytearray (see the module docstring).
                    bound = tuple(map(bytearray, chunk)) if blobs else tuple(chunk)
                    rows.extend(cursor.execute(sql, bound).fetchall())
        finally:
            cursor.close()
        return rows, work()

    def table_is_empty(self, connection: Connection, table: str) -> bool:
        _names(table)
        return connection.exec_driver_sql(f"SELECT 1 FROM {table} LIMIT 1").first() is None  # noqa: S608 - schema names only (_names)

    # inserts

    def copies(self, count: int) -> bool:
        """Whether a batch of ``count`` new rows goes to the database by COPY (PostgreSQL)."""
        return self.pg and count >= _PG_COPY_FROM

    def insert_cois(
        self, connection: Connection, chunks: Iterable[CoiBatch], count: int
    ) -> list[int]:
        """Insert new vault_coi rows, skipping conflicts; return the positions NOT inserted.

        ``chunks`` (``count`` rows in all, positions counted across them) may be made on
        demand: PostgreSQL's COPY takes each as it comes, so the server inserts one while the
        caller makes the next. A row is not inserted when its (subject, event) or its COI is
        already taken; the caller finds out by whom.
        """
        if not count:
            return []
        if self.copies(count):
            return self._copy_cois(connection, chunks)
        batch = CoiBatch.concat(list(chunks))
        if self.pg:
            return self._insert_cois_on_conflict(connection, batch)
        names, rows = batch.rows(bytearray)
        marks = ",".join("?" * len(names))
        sql = f"INSERT INTO vault_coi ({', '.join(names)}) VALUES ({marks}) ON CONFLICT DO NOTHING"  # noqa: S608 - schema names only
        before = connection.exec_driver_sql("SELECT max(rowid) FROM vault_coi").scalar() or 0
        result = connection.exec_driver_sql(sql, list(rows))
        if result.rowcount == len(batch):
            return []
        # Some rows met a COI that was taken before (this transaction holds the write lock,
        # and its pairs are new: a taken COI is the only conflict left). Rows are never
        # deleted, so each new row's rowid is above ``before``: the taken COIs are the batch's
        # COIs on rows at or below it, found in the COI index alone.
        taken: set[str] = set()
        driver: Any = connection.connection.driver_connection
        cursor = driver.cursor()
        try:
            with sqlite_errors():
                for chunk in _chunks(sorted(batch.cois), _SQLITE_CHUNK - 1):
                    marks = ",".join("?" * len(chunk))
                    taken.update(
                        row[0]
                        for row in cursor.execute(
                            f"SELECT coi FROM vault_coi WHERE rowid <= ? AND coi IN ({marks})",  # noqa: S608 - no values interpolated
                            (before, *chunk),
                        )
                    )
        finally:
            cursor.close()
        return [position for position, coi in enumerate(batch.cois) if coi in taken]

    def _copy_cois(self, connection: Connection, chunks: Iterable[CoiBatch]) -> list[int]:
        # PostgreSQL, large batches: binary COPY straight into vault_coi (COPY has no ON
        # CONFLICT; see the module docstring for what happens when a row is taken).
        pending = iter(chunks)
        done: list[CoiBatch] = []
        first = next(pending, None)
        if first is None:
            return []
        names = [name for name, _ in first.columns()]
        driver = connection.connection.driver_connection
        assert driver is not None
        savepoint = connection.begin_nested()
        try:
            with (
                pg_errors(),
                driver.cursor() as cursor,
                cursor.copy(
                    f"COPY vault_coi ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                set_copy_types(cursor, copy, [_PG_COPY_TYPES[_PG_TYPES[c]] for c in names])
                write = copy.write_row
                for chunk in chain([first], pending):
                    done.append(chunk)
                    for row in chunk.rows()[1]:
                        write(row)
        except exc.IntegrityError as error:
            savepoint.rollback()
            if not isinstance(error.orig, psycopg.errors.UniqueViolation):
                raise
            return self._stage_cois(connection, CoiBatch.concat([*done, *pending]))
        savepoint.commit()
        return []

    def _stage_cois(self, connection: Connection, batch: CoiBatch) -> list[int]:
        # Binary COPY into a session-local staging table, then one INSERT ... SELECT ...
        # ON CONFLICT DO NOTHING (three times faster than unnest() arrays for 100,000 rows).
        names, rows = batch.rows()
        columns = ", ".join(names)
        connection.exec_driver_sql(
            "CREATE TEMPORARY TABLE IF NOT EXISTS vault_coi_incoming "
            "(LIKE vault_coi) ON COMMIT DELETE ROWS"
        )
        connection.exec_driver_sql("TRUNCATE vault_coi_incoming")
        driver = connection.connection.driver_connection
        assert driver is not None
        with (
            pg_errors(),
            driver.cursor() as cursor,
            cursor.copy(f"COPY vault_coi_incoming ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            set_copy_types(cursor, copy, [_PG_COPY_TYPES[_PG_TYPES[c]] for c in names])
            write = copy.write_row
            for row in rows:
                write(row)
        result = connection.exec_driver_sql(
            f"INSERT INTO vault_coi ({columns}) SELECT {columns} FROM vault_coi_incoming "  # noqa: S608 - schema names only
            "ORDER BY subject, event ON CONFLICT DO NOTHING RETURNING coi"
        )
        inserted = {r[0] for r in result}
        return [position for position, coi in enumerate(batch.cois) if coi not in inserted]

    def _insert_cois_on_conflict(self, connection: Connection, batch: CoiBatch) -> list[int]:
        # PostgreSQL, small batches: one INSERT ... SELECT FROM unnest(arrays) per chunk.
        count = len(batch)
        columns = [
            (name, values if isinstance(values, (list, tuple)) else list(islice(values, count)))
            for name, values in batch.columns()
        ]
        names = [name for name, _ in columns]
        arrays = ", ".join(f"%s::{_PG_TYPES[c]}[]" for c in names)
        sql = (
            f"INSERT INTO vault_coi ({', '.join(names)}) SELECT * FROM unnest({arrays}) "  # noqa: S608 - schema names only (_names)
            "ON CONFLICT DO NOTHING RETURNING coi"
        )
        inserted: set[str] = set()
        for start in range(0, count, _PG_CHUNK):
            params = tuple(list(values[start : start + _PG_CHUNK]) for _, values in columns)
            inserted.update(r[0] for r in connection.exec_driver_sql(sql, params))
        return [position for position, coi in enumerate(batch.cois) if coi not in inserted]

    def insert_rows(
        self,
        connection: Connection,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Plain batched insert (audit events, data keys, aliases)."""
        if not rows:
            return
        _names(table, *columns)
        names = ", ".join(columns)
        placeholders = ",".join(["%s" if self.pg else "?"] * len(columns))
        sql = f"INSERT INTO {table} ({names}) VALUES ({placeholders})"  # noqa: S608 - schema names only (_names)
        connection.exec_driver_sql(sql, list(rows))

    # updates

    def update_many(
        self,
        connection: Connection,
        table: str,
        key: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """``UPDATE table SET columns WHERE key`` for rows of (key, *values), batched."""
        if not rows:
            return
        _names(table, key, *columns)
        if self.pg:
            names = [key, *columns]
            arrays = ", ".join(f"%s::{_PG_TYPES[c]}[]" for c in names)
            assignments = ", ".join(f"{c} = v.{c}" for c in columns)
            sql = (
                f"UPDATE {table} AS t SET {assignments} FROM unnest({arrays}) "  # noqa: S608 - schema names only (_names)
                f"AS v({', '.join(names)}) WHERE t.{key} = v.{key}"
            )
            for chunk in _chunks(rows, _PG_CHUNK):
                params = tuple(list(column) for column in zip(*chunk, strict=True))
                connection.exec_driver_sql(sql, params)
            return
        assignments = ", ".join(f"{c} = ?" for c in columns)
        sql = f"UPDATE {table} SET {assignments} WHERE {key} = ?"  # noqa: S608 - schema names only (_names)
        connection.exec_driver_sql(sql, [(*row[1:], row[0]) for row in rows])

    def execute(
        self, connection: Connection, sql: str, params: tuple[Any, ...] = ()
    ) -> CursorResult[Any]:
        """Run ``sql`` written with ``?`` placeholders on either backend."""
        return connection.exec_driver_sql(sql.replace("?", "%s") if self.pg else sql, params)
