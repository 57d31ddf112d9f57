"""What the clinical format adapters hand on: a record's subject, the feed's subject policy, and
problems with stable codes (pure).

Clinical resources and messages name their patient indirectly (a FHIR ``subject`` reference to
a Patient, an HL7 PID segment). The adapters resolve that patient into :class:`SubjectFields`
and attach them to the record in one documented place, classified *restricted* in every
mapping, so that the mapping's ``identity: {tokenize: ...}`` can send them to the vault:

* FHIR: the element ``_subject`` of the resource dict: ``{"system", "value", "family",
  "given", "birthDate"}``;
* HL7 v2: the synthesized segment ``ZSI`` (``ZSI-1`` system, ``ZSI-2`` value, ``ZSI-3``
  family name, ``ZSI-4`` given name, ``ZSI-5`` birth date).

Which identifier is the subject's is the feed's :class:`SubjectPolicy` (mapping
``source.options``): ``subject_systems`` lists accepted identifier systems (exact, or a
prefix ending in ``*``), ``assigning_authorities`` maps HL7 assigning-authority namespaces to
systems, and the identifier type ``MR`` is preferred among several accepted ones.

Problem codes (messages name codes and locations, never values):

============================== ===============================================================
IDENTITY_SUBJECT_MISSING       the record names no subject (no ``subject``, no PID-3)
IDENTITY_SUBJECT_UNRESOLVED    the subject reference points at no Patient the source returned
IDENTITY_SYSTEM_UNCONFIGURED   none of the subject's identifiers has a system configured for
                               the feed
============================== ===============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cmohub.errors import ConfigError
from cmohub.sensitive import REDACTED

RECORD_MALFORMED = "RECORD_MALFORMED"
SUBJECT_MISSING = "IDENTITY_SUBJECT_MISSING"
SUBJECT_UNRESOLVED = "IDENTITY_SUBJECT_UNRESOLVED"
SYSTEM_UNCONFIGURED = "IDENTITY_SYSTEM_UNCONFIGURED"


@dataclass(frozen=True, slots=True)
class FormatProblem:
    """Why a record or message cannot be used: a stable code, a message, a location."""

    code: str
    message: str
    where: str | None = None
    #: What identifies the record without naming anyone: a FHIR resource ID, an HL7 message
    #: control ID. Quarantine entries carry it so a person (and scoring) can find the record.
    key: tuple[tuple[str, str], ...] = ()

    def keyed(self, **key: str | None) -> FormatProblem:
        """This problem with the given record keys (empty values are left out)."""
        found = tuple(sorted((k, v) for k, v in key.items() if v))
        return replace(self, key=tuple(sorted({*self.key, *found})))

    @property
    def malformed(self) -> bool:
        """True for parse failures (quarantined as RECORD_MALFORMED)."""
        return self.code.startswith("PARSE_")

    def __str__(self) -> str:
        location = f" (at {self.where})" if self.where else ""
        return f"{self.code}: {self.message}{location}"


@dataclass(frozen=True, slots=True)
class SubjectFields:
    """The subject's identifier and linkage demographics, as received. Never logged."""

    system: str
    value: str
    family: str | None = None
    given: str | None = None
    birth_date: str | None = None

    def __repr__(self) -> str:
        return f"SubjectFields(system={self.system!r}, value={REDACTED})"

    def as_fhir_element(self) -> dict[str, str]:
        """The ``_subject`` element attached to a FHIR resource dict."""
        out = {"system": self.system, "value": self.value}
        for key, value in (
            ("family", self.family),
            ("given", self.given),
            ("birthDate", self.birth_date),
        ):
            if value:
                out[key] = value
        return out

    def zsi_field(self, number: int) -> str | None:
        """Field ``number`` of the synthesized ``ZSI`` segment."""
        return (self.system, self.value, self.family, self.given, self.birth_date)[number - 1] or (
            None
        )


@dataclass(frozen=True, slots=True)
class SubjectPolicy:
    """Which subject identifiers a feed accepts (from its mapping's ``source.options``)."""

    systems: tuple[str, ...] = ()
    authorities: tuple[tuple[str, str], ...] = ()
    preferred_type: str = "MR"

    def accepts(self, system: str | None) -> bool:
        if not system:
            return False
        for accepted in self.systems:
            if accepted.endswith("*"):
                if system.startswith(accepted[:-1]):
                    return True
            elif system == accepted:
                return True
        return False

    def authority_system(self, namespace: str) -> str | None:
        return dict(self.authorities).get(namespace)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, where: str = "") -> SubjectPolicy:
        """The policy of a mapping's ``source.options`` (``subject_systems``, ...)."""
        systems = options.get("subject_systems") or ()
        authorities = options.get("assigning_authorities") or {}
        if isinstance(systems, str):
            systems = (systems,)
        if not all(isinstance(s, str) and s for s in systems) or not isinstance(
            authorities, Mapping
        ):
            raise ConfigError(
                "subject_systems must be a list of systems and assigning_authorities a mapping",
                code="CONFIG_INVALID",
                where=where or None,
            )
        return cls(
            systems=tuple(systems),
            authorities=tuple(sorted((str(k), str(v)) for k, v in authorities.items())),
            preferred_type=str(options.get("subject_identifier_type", "MR")),
        )


def choose_identifier(
    candidates: list[tuple[str | None, str | None, str | None]], policy: SubjectPolicy
) -> tuple[str, str] | FormatProblem:
    """The (system, value) among ``(system, value, type code)`` candidates the policy accepts.

    Several accepted: the first whose type is the preferred one (``MR``), else the first.
    """
    usable = [(s, v, t) for s, v, t in candidates if s and v]
    if not usable:
        return FormatProblem(SUBJECT_MISSING, "the subject has no identifier with a system")
    accepted = [(s, v, t) for s, v, t in usable if policy.accepts(s)]
    if not accepted:
        return FormatProblem(
            SYSTEM_UNCONFIGURED,
            f"none of the subject's {len(usable)} identifier(s) has a system configured for "
            "this feed (source.options.subject_systems)",
        )
    preferred = [c for c in accepted if c[2] == policy.preferred_type]
    system, value, _ = (preferred or accepted)[0]
    assert system is not None and value is not None  # filtered above
    return system, value
