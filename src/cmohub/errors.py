"""The one error tree of cmohub.

Every error the hub raises on purpose is a :class:`HubError`. Each class carries a stable
``code`` (UPPER_SNAKE, never reused for another meaning) and is marked either
:class:`Transient` (worth retrying: a server is down, a lock is held) or :class:`Terminal`
(retrying cannot help: the input or the configuration is wrong)::

    HubError
    ├── TransientError                      retry (Airflow: task retry)
    │   ├── SourceUnavailable               SOURCE_UNAVAILABLE
    │   ├── SourceRateLimited               SOURCE_RATE_LIMITED
    │   ├── SourceTimeout                   SOURCE_TIMEOUT
    │   ├── StoreUnavailable                STORE_UNAVAILABLE
    │   └── RunLocked                       RUN_LOCKED
    └── TerminalError                       fail now (Airflow: AirflowFailException)
        ├── ConfigError                     CONFIG_INVALID
        ├── IdentifierError                 ID_*      (identifiers.py, one code per failure)
        ├── InputError                      INPUT_INVALID  (a record or file is unusable)
        │   ├── ParseError                  PARSE_*   (formats/)
        │   ├── MappingError                MAPPING_* (mapping/)
        │   └── ContractError               CONTRACT_* (contracts/)
        ├── SourceError                     SOURCE_*  (a source answered, but with an error)
        ├── VaultError                      VAULT_*
        │   └── AccessDenied                VAULT_ACCESS_DENIED
        ├── CryptoError                     CRYPTO_*  (crypto/)
        ├── PublishError                    PUBLISH_*
        └── LedgerImbalance                 RUN_LEDGER_IMBALANCE (records lost in a run)

Messages say what was wrong and where (field path, file, line, sequence number) and never
carry a patient value: callers pass identifiers wrapped in :class:`cmohub.sensitive.Sensitive`
and must not format them into messages. ``where`` is a location, not a value.

Subclasses for a family of failures either define their own class with its own ``code`` or
pass ``code=`` for a code documented next to the raising function; either way the code is
part of the public interface and is what tests, quarantine files and the CLI show.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar


class Transient:
    """Marker: the operation may succeed if retried later."""

    retryable: ClassVar[bool] = True


class Terminal:
    """Marker: retrying cannot help; fail the task and tell a person."""

    retryable: ClassVar[bool] = False


class HubError(Exception):
    """Base of every error cmohub raises on purpose."""

    code: ClassVar[str] = "HUB_ERROR"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str | None = None, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        if code is not None:
            # Instance-level code for a documented family member (e.g. PARSE_HL7_TRUNCATED).
            self.code = code  # type: ignore[misc]

    def __str__(self) -> str:
        location = f" (at {self.where})" if self.where else ""
        return f"{self.code}: {self.message}{location}"

    def to_dict(self) -> dict[str, str | bool | None]:
        """A JSON-ready description, as written to quarantine files and reports."""
        return {
            "code": self.code,
            "message": self.message,
            "where": self.where,
            "retryable": self.retryable,
        }


class TransientError(Transient, HubError):
    code: ClassVar[str] = "TRANSIENT"


class TerminalError(Terminal, HubError):
    code: ClassVar[str] = "TERMINAL"


# --- transient -------------------------------------------------------------------------------


class SourceUnavailable(TransientError):
    code: ClassVar[str] = "SOURCE_UNAVAILABLE"


class SourceRateLimited(TransientError):
    code: ClassVar[str] = "SOURCE_RATE_LIMITED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        code: str | None = None,
        where: str | None = None,
    ) -> None:
        super().__init__(message, code=code, where=where)
        self.retry_after_seconds = retry_after_seconds


class SourceTimeout(TransientError):
    code: ClassVar[str] = "SOURCE_TIMEOUT"


class StoreUnavailable(TransientError):
    code: ClassVar[str] = "STORE_UNAVAILABLE"


class RunLocked(TransientError):
    """Another run holds the lock for the same dataset and interval."""

    code: ClassVar[str] = "RUN_LOCKED"


# --- terminal --------------------------------------------------------------------------------


class ConfigError(TerminalError):
    code: ClassVar[str] = "CONFIG_INVALID"


class IdentifierError(TerminalError):
    """An ISBT 128 identifier (COI, DIN) is malformed; ``code`` says how (ID_*)."""

    code: ClassVar[str] = "ID_INVALID"


class InputError(TerminalError):
    """A record or file cannot be used; it is quarantined with this error's code."""

    code: ClassVar[str] = "INPUT_INVALID"


class ParseError(InputError):
    code: ClassVar[str] = "PARSE_INVALID"


class MappingError(InputError):
    code: ClassVar[str] = "MAPPING_INVALID"


class ContractError(InputError):
    code: ClassVar[str] = "CONTRACT_INVALID"


class SourceError(TerminalError):
    """A source answered with an error that retrying will not fix (4xx, OperationOutcome)."""

    code: ClassVar[str] = "SOURCE_ERROR"


class VaultError(TerminalError):
    code: ClassVar[str] = "VAULT_ERROR"


class AccessDenied(VaultError):
    code: ClassVar[str] = "VAULT_ACCESS_DENIED"


class CryptoError(TerminalError):
    code: ClassVar[str] = "CRYPTO_ERROR"


class PublishError(TerminalError):
    code: ClassVar[str] = "PUBLISH_ERROR"


class LedgerImbalance(TerminalError):
    """Received records do not equal valid + quarantined + duplicates: something was lost."""

    code: ClassVar[str] = "RUN_LEDGER_IMBALANCE"


def is_retryable(error: BaseException) -> bool:
    """True when ``error`` is a HubError marked Transient."""
    return isinstance(error, HubError) and error.retryable


@contextmanager
def unreadable_as(error: type[HubError], what: str, *, code: str, where: object) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into ``error``: "cannot read <what> (<reason>)"."""
    try:
        yield
    except OSError as problem:
        raise error(
            f"cannot read {what} ({problem.strerror or type(problem).__name__})",
            code=code,
            where=str(where),
        ) from None
