"""Normalization of what the vault indexes: systems, values, therapy events, demographics.

Two spellings of the same identifier must give the same blind index, and two different
identifiers must never be folded into one (that would give two patients one COI — the worst
failure a cell therapy hub can have). The rules therefore normalize only what is noise:

**System URI** (:func:`normalize_system`)
  * surrounding whitespace is removed; whitespace or control characters inside are an error;
  * ``urn:oid:`` is written in lower case, and a bare OID (``2.16.840.1.113883.19.5``, as
    HL7 v2 assigning authorities send it) becomes ``urn:oid:2.16.840.1.113883.19.5``; an OID
    must be dotted decimal without leading zeros;
  * other URNs: ``urn:`` and the namespace identifier in lower case (RFC 8141), the rest as is;
  * ``http``/``https`` URLs: scheme and host in lower case, the default port dropped, one
    trailing ``/`` dropped; the path keeps its case (paths are case-sensitive); a query or a
    fragment is an error. ``http`` and ``https`` stay different systems (FHIR compares system
    URIs as strings);
  * any other scheme is an error.

**Identifier value** (:func:`normalize_value`)
  * Unicode NFKC (full-width ``ＭＲＮ１`` is ``MRN1``), surrounding whitespace removed, runs of
    inner whitespace collapsed to one space;
  * control characters, an empty value or more than 128 characters are an error;
  * case is kept, unless the system is declared case-insensitive, in which case the value is
    case-folded. Case-sensitive is the default because FHIR identifier values are
    case-sensitive and because folding can merge two patients, while not folding can at worst
    give one patient a second COI, which reconciliation finds.

**Therapy event** (:func:`normalize_event`): like a case-sensitive identifier value, at most
64 characters.

**Demographics** (:func:`normalize_demographics`, linkage checks only): names are NFKD with
accents removed, case-folded, with anything but letters and digits removed (``O'Brien`` =
``obrien``); birth dates ``YYYY-MM-DD``, ``YYYYMMDD``, ``YYYY-MM`` and ``YYYY`` become ISO
form, other text is compared as given after trimming.

Which systems are accepted comes from a :class:`SystemRegistry` (``CMOHUB_HOME/
identifier-systems.yaml``; without that file, the sandbox systems under
``urn:cmohub:sandbox:`` and ``https://sandbox.cmohub.invalid/``, and any ``urn:oid:``
system). Errors are
:class:`~cmohub.errors.VaultError` with codes ``VAULT_SYSTEM_INVALID``,
``VAULT_UNKNOWN_SYSTEM``, ``VAULT_IDENTIFIER_INVALID`` and ``VAULT_EVENT_INVALID``; the
systems file raises :class:`~cmohub.errors.ConfigError` ``VAULT_SYSTEMS_INVALID``. No
message contains an identifier value.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cmohub.errors import ConfigError, VaultError
from cmohub.identity import Demographics

MAX_VALUE_LENGTH = 128
MAX_EVENT_LENGTH = 64
MAX_SYSTEM_LENGTH = 512

_OID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
_URN = re.compile(r"urn:([A-Za-z0-9][A-Za-z0-9-]{0,31}):(\S+)", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ISO_DATE = re.compile(r"([0-9]{4})(?:-?([0-9]{2})(?:-?([0-9]{2}))?)?")

SANDBOX_SYSTEM_PREFIX = "https://sandbox.cmohub.invalid/"
SANDBOX_URN_PREFIX = "urn:cmohub:sandbox:"
OID_SYSTEM_PREFIX = "urn:oid:"


def _system_error(message: str) -> VaultError:
    return VaultError(f"identifier system {message}", code="VAULT_SYSTEM_INVALID")


def normalize_system(text: str) -> str:
    """The canonical form of an identifier system URI (see the module docstring)."""
    if not isinstance(text, str):
        raise _system_error("is not text")
    system = text.strip()
    if not system:
        raise _system_error("is empty")
    if len(system) > MAX_SYSTEM_LENGTH:
        raise _system_error(f"is longer than {MAX_SYSTEM_LENGTH} characters")
    if not system.isprintable() or any(ch.isspace() for ch in system):
        raise _system_error("contains whitespace or control characters")
    if _OID.fullmatch(system):
        return OID_SYSTEM_PREFIX + system
    lower = system.lower()
    if lower.startswith(OID_SYSTEM_PREFIX):
        oid = system[len(OID_SYSTEM_PREFIX) :]
        if not _OID.fullmatch(oid):
            raise _system_error("is a urn:oid: without a valid dotted-decimal OID")
        return OID_SYSTEM_PREFIX + oid
    if lower.startswith("urn:"):
        match = _URN.fullmatch(system)
        if match is None:
            raise _system_error("is not a valid URN")
        return f"urn:{match.group(1).lower()}:{match.group(2)}"
    try:
        parts = urlsplit(system)
        port = parts.port
    except ValueError:
        raise _system_error("is not a valid URI") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _system_error("must be an http(s) URL, a urn:oid: or another URN")
    if not parts.hostname:
        raise _system_error("has no host")
    if parts.query or parts.fragment or "?" in system or "#" in system:
        raise _system_error("must not have a query or a fragment")
    if parts.username or parts.password:
        raise _system_error("must not contain credentials")
    host = parts.hostname.lower()
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    return f"{scheme}://{netloc}{path}"


def _clean(text: str, what: str, code: str, limit: int) -> str:
    if type(text) is str and text.isascii() and text.isprintable():
        # The usual case, in every batch: printable ASCII, whose only whitespace is the
        # space, so stripping and collapsing double spaces is the general path's result.
        value = text.strip()
        if "  " in value:
            value = " ".join(value.split())
        if value and len(value) <= limit:
            return value
    if not isinstance(text, str):
        raise VaultError(f"{what} is not text", code=code)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    value = " ".join(text.split())
    if not value:
        raise VaultError(f"{what} is empty", code=code)
    if not value.isprintable():
        raise VaultError(f"{what} contains control characters", code=code)
    if len(value) > limit:
        raise VaultError(f"{what} is longer than {limit} characters", code=code)
    return value


def normalize_value(text: str, *, case_insensitive: bool = False) -> str:
    """The canonical form of an identifier value (see the module docstring)."""
    value = _clean(text, "identifier value", "VAULT_IDENTIFIER_INVALID", MAX_VALUE_LENGTH)
    return value.casefold() if case_insensitive else value


def normalize_event(text: str) -> str:
    """The canonical form of a therapy event (enrollment or treatment number)."""
    return _clean(text, "therapy event", "VAULT_EVENT_INVALID", MAX_EVENT_LENGTH)


def _normalize_name(text: str) -> str | None:
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(ch for ch in decomposed if ch.isalnum() and not unicodedata.combining(ch))
    return kept.casefold() or None


def _normalize_birth_date(text: str) -> str | None:
    value = text.strip()
    match = _ISO_DATE.fullmatch(value)
    if match is None:
        return value or None
    return "-".join(part for part in match.groups() if part is not None)


#: Demographic fields compared for linkage, in the order they are stored.
DEMOGRAPHIC_FIELDS = ("family_name", "given_name", "birth_date")


def normalize_demographics(demographics: Demographics) -> dict[str, str]:
    """Normalized demographic fields that are present (for keyed hashing, never stored)."""
    out: dict[str, str] = {}
    for field, sensitive in demographics.present().items():
        raw = sensitive.reveal()
        value = _normalize_birth_date(raw) if field == "birth_date" else _normalize_name(raw)
        if value:
            out[field] = value
    return out


# --- which systems the vault accepts --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemRule:
    """An accepted identifier system (exact ``uri``) or family of systems (``prefix``)."""

    uri: str | None = None
    prefix: str | None = None
    case_insensitive: bool = False
    pattern: re.Pattern[str] | None = None  # applied to the normalized value
    description: str = ""

    def matches(self, system: str) -> bool:
        if self.uri is not None:
            return system == self.uri
        return self.prefix is not None and system.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class IdentifierPolicy:
    """How values of one (normalized) system are normalized and checked."""

    system: str
    case_insensitive: bool
    pattern: re.Pattern[str] | None

    def normalize(self, value: str) -> str:
        normalized = _clean(value, "identifier value", "VAULT_IDENTIFIER_INVALID", MAX_VALUE_LENGTH)
        if self.case_insensitive:
            normalized = normalized.casefold()
        if self.pattern is not None and not self.pattern.fullmatch(normalized):
            raise VaultError(
                "identifier value does not match the pattern configured for its system",
                code="VAULT_IDENTIFIER_INVALID",
            )
        return normalized


class SystemRegistry:
    """The identifier systems the vault accepts; exact URIs win over prefixes."""

    def __init__(self, rules: Iterable[SystemRule]) -> None:
        self.rules = tuple(rules)
        self._exact = {r.uri: r for r in self.rules if r.uri is not None}
        self._prefixes = sorted(
            (r for r in self.rules if r.prefix is not None),
            key=lambda r: len(r.prefix or ""),
            reverse=True,
        )
        self._cache: dict[str, IdentifierPolicy] = {}

    @classmethod
    def default(cls) -> SystemRegistry:
        """The embedded default: the sandbox's systems and any ``urn:oid:`` system."""
        return cls(
            [
                SystemRule(prefix=SANDBOX_URN_PREFIX, description="sandbox MRN systems"),
                SystemRule(prefix=SANDBOX_SYSTEM_PREFIX, description="sandbox systems"),
                SystemRule(prefix=OID_SYSTEM_PREFIX, description="any OID-identified system"),
            ]
        )

    def policy(self, system: str) -> IdentifierPolicy:
        """The policy for ``system`` (raw or normalized); VAULT_UNKNOWN_SYSTEM if not accepted."""
        cached = self._cache.get(system)
        if cached is not None:
            return cached
        normalized = normalize_system(system)
        rule = self._exact.get(normalized)
        if rule is None:
            rule = next((r for r in self._prefixes if r.matches(normalized)), None)
        if rule is None:
            raise VaultError(
                "identifier system is not accepted by this vault (add it to "
                "identifier-systems.yaml in CMOHUB_HOME)",
                code="VAULT_UNKNOWN_SYSTEM",
                where=normalized,
            )
        policy = IdentifierPolicy(normalized, rule.case_insensitive, rule.pattern)
        if len(self._cache) < 4096:
            self._cache[system] = policy
        return policy


def _normalize_prefix(text: str) -> str:
    raw = text.strip()
    if raw.lower().startswith(OID_SYSTEM_PREFIX):
        return OID_SYSTEM_PREFIX + raw[len(OID_SYSTEM_PREFIX) :]
    return normalize_system(raw.rstrip("/")) + ("/" if raw.endswith("/") else "")


def _rule_from_mapping(entry: Mapping[str, Any], position: int) -> SystemRule:
    where = f"systems[{position}]"
    allowed = {"uri", "prefix", "case_insensitive", "pattern", "description"}
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(
            f"unknown keys {sorted(unknown)}", code="VAULT_SYSTEMS_INVALID", where=where
        )
    uri, prefix = entry.get("uri"), entry.get("prefix")
    if (uri is None) == (prefix is None):
        raise ConfigError(
            "give exactly one of 'uri' or 'prefix'", code="VAULT_SYSTEMS_INVALID", where=where
        )
    try:
        if uri is not None:
            uri = normalize_system(str(uri))
        else:
            prefix = _normalize_prefix(str(prefix))
    except VaultError as error:
        raise ConfigError(error.message, code="VAULT_SYSTEMS_INVALID", where=where) from None
    pattern_text = entry.get("pattern")
    try:
        pattern = re.compile(str(pattern_text)) if pattern_text is not None else None
    except re.error:
        raise ConfigError(
            "pattern is not a valid regular expression", code="VAULT_SYSTEMS_INVALID", where=where
        ) from None
    case_insensitive = entry.get("case_insensitive", False)
    if not isinstance(case_insensitive, bool):
        raise ConfigError(
            "case_insensitive must be true or false", code="VAULT_SYSTEMS_INVALID", where=where
        )
    return SystemRule(
        uri=uri,
        prefix=prefix,
        case_insensitive=case_insensitive,
        pattern=pattern,
        description=str(entry.get("description", "")),
    )


def parse_systems(data: Any) -> SystemRegistry:
    """A registry from the parsed YAML of an identifier-systems file."""
    if not isinstance(data, Mapping) or not isinstance(data.get("systems"), list):
        raise ConfigError("expected a mapping with a 'systems' list", code="VAULT_SYSTEMS_INVALID")
    rules = []
    for position, entry in enumerate(data["systems"]):
        if not isinstance(entry, Mapping):
            raise ConfigError(
                "each system must be a mapping",
                code="VAULT_SYSTEMS_INVALID",
                where=f"systems[{position}]",
            )
        rules.append(_rule_from_mapping(entry, position))
    return SystemRegistry(rules)


def load_systems(path: Path) -> SystemRegistry:
    """The registry in ``path``, or :meth:`SystemRegistry.default` when the file is absent."""
    if not path.exists():
        return SystemRegistry.default()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            f"cannot read the identifier systems file ({type(error).__name__})",
            code="VAULT_SYSTEMS_INVALID",
            where=str(path),
        ) from None
    try:
        return parse_systems(data)
    except ConfigError as error:
        raise ConfigError(
            error.message, code=error.code, where=f"{path}: {error.where or 'top level'}"
        ) from None


SYSTEMS_TEMPLATE = f"""\
# Identifier systems this vault accepts (cmohub vault init wrote this file).
# Each entry is either an exact system URI ('uri') or a family of systems ('prefix').
#   case_insensitive: true   values are case-folded before indexing (default: false,
#                            values are case-sensitive as in FHIR)
#   pattern: REGEX           the normalized value must match it entirely
# An identifier whose system matches no entry is refused with VAULT_UNKNOWN_SYSTEM.
systems:
  - prefix: "{SANDBOX_URN_PREFIX}"
    description: sandbox MRN systems, one per site (synthetic data only)
  - prefix: "{SANDBOX_SYSTEM_PREFIX}"
    description: sandbox systems (synthetic data only)
  - prefix: "{OID_SYSTEM_PREFIX}"
    description: any OID-identified system (narrow this in production)
"""
