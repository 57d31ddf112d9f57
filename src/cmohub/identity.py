"""The identity boundary: what crosses into the vault, and the port the rest of the hub uses.

A clinical parser turns a patient's identifier into a :class:`SubjectIdentity` (the value is
:class:`~cmohub.sensitive.Sensitive`); pipelines hand batches of :class:`TokenizeRequest` to an
:class:`IdentityPort` and get COIs back. CMO and courier feeds carry only COIs and ask the port
to :meth:`~IdentityPort.verify_many` them. The vault (``cmohub.vault``) implements the port;
the functional core (mapping, formats) depends only on this module, never on the vault.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from cmohub.identifiers import Coi
from cmohub.sensitive import REDACTED, Sensitive


@dataclass(frozen=True, slots=True)
class Demographics:
    """Linkage-only demographics. Compared by the vault; never stored in clear, never staged."""

    family_name: Sensitive[str] | None = None
    given_name: Sensitive[str] | None = None
    birth_date: Sensitive[str] | None = None  # ISO 8601 date text as received

    def present(self) -> dict[str, Sensitive[str]]:
        return {
            name: value
            for name, value in (
                ("family_name", self.family_name),
                ("given_name", self.given_name),
                ("birth_date", self.birth_date),
            )
            if value is not None
        }


@dataclass(frozen=True, slots=True)
class SubjectIdentity:
    """A subject as the clinical side knows it: identifier system + value (e.g. an MRN)."""

    system: str
    value: Sensitive[str]
    demographics: Demographics = field(default_factory=Demographics)

    def __repr__(self) -> str:
        return f"SubjectIdentity(system={self.system!r}, value={REDACTED})"


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    """One subject identity for one therapy event (e.g. an enrollment or treatment number)."""

    identity: SubjectIdentity
    therapy_event: str


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks the vault: a person (privacy officer) or a service (``pipeline:clinical_sync``)."""

    name: str
    role: str
    feed: str | None = None  # the feed a pipeline actor works for, recorded in the audit log


class CoiStatus(StrEnum):
    KNOWN = "known"
    UNKNOWN = "unknown"
    WITHDRAWN = "withdrawn"  # consent withdrawn: identifier destroyed, COI kept for traceability


class IdentityPort(Protocol):
    """What pipelines need from the vault. Batched: never one round trip per identity."""

    def tokenize_many(self, requests: Sequence[TokenizeRequest], *, actor: Actor) -> list[Coi]:
        """The COI of each request, allocating a new random COI on first sight."""
        ...

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        """Known / unknown / withdrawn for each COI (data form, check character included)."""
        ...
