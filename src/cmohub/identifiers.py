"""ISBT 128 identifiers: the ISO/IEC 7064 MOD 37-2 check character, COI and DIN.

**Chain of Identity (COI)**, ICCBBA ST-028, data structure 040: ``CH`` + facility
identification number (FIN, 5) + year (2 digits) + sequence (6 of A–Z, 0–9) = 15 characters,
followed by the keyboard check character K (MOD 37-2 over the 15). The hub's data form is the
16 characters without spaces (``CHA999026ABC123K``); :func:`format_coi` gives the spaced form
people read. On input, a bar-code data identifier ``&/`` and any spaces are ignored, and ASCII
letters are upper-cased.

**Donation identification number (DIN)**, ST-001: FIN (5) + year (2 digits) + sequence
(6 digits) = 13 characters, followed by the keyboard check character. On input, a leading
``=`` (the DIN's bar-code data identifier) and spaces are ignored.

**FIN**: one letter A–Z except O, then four digits (``A9990``–``A9999`` are ICCBBA test
facilities: all sandbox and test data use them).

Every way an identifier can be wrong has its own code, raised as :class:`IdentifierError`:

==================== =========================================================
ID_EMPTY             nothing left after removing prefix and spaces
ID_LENGTH            wrong number of characters
ID_CHARACTER         a character outside the ISBT 128 alphabet (A–Z, 0–9)
ID_PREFIX            a COI that does not begin with ``CH``
ID_FACILITY          the FIN is not a letter (not O) and four digits
ID_YEAR              the year is not two digits
ID_SEQUENCE          a sequence character outside its alphabet
ID_CHECK_CHARACTER   the check character does not match the rest (corruption or mistyping)
==================== =========================================================

Messages name positions, never the input itself: a mis-keyed patient number in a COI column
must not be echoed into logs. Pure module: the random source for :func:`allocate_coi` is a
parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from cmohub.errors import IdentifierError

MOD37_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"
_VALUE = {ch: i for i, ch in enumerate(MOD37_ALPHABET)}
_DATA_ALPHABET = frozenset(MOD37_ALPHABET[:36])
_SEQUENCE_ALPHABET = MOD37_ALPHABET[:36]

COI_PREFIX = "CH"
COI_BAR_CODE_PREFIX = "&/"
DIN_BAR_CODE_PREFIX = "="
COI_LENGTH = 15
DIN_LENGTH = 13
TEST_FACILITIES = tuple(f"A999{d}" for d in range(10))

_FIN = re.compile(r"[A-NP-Z][0-9]{4}")
_YEAR = re.compile(r"[0-9]{2}")
_COI_SEQUENCE = re.compile(r"[A-Z0-9]{6}")
_DIN_SEQUENCE = re.compile(r"[0-9]{6}")
# Longest input we inspect; beyond this we only report the length (and do no other work).
_MAX_INPUT = 64


def mod37_2(data: str) -> str:
    """The ISO/IEC 7064 MOD 37-2 check character for ``data`` (characters 0–9, A–Z).

    >>> mod37_2("G123498654321"), mod37_2("A999818123456")
    ('H', 'N')
    """
    total = 0
    for ch in data:
        try:
            total = ((total + _VALUE[ch]) * 2) % 37
        except KeyError:
            raise IdentifierError(
                "character outside the ISO/IEC 7064 MOD 37-2 alphabet", code="ID_CHARACTER"
            ) from None
    return MOD37_ALPHABET[(38 - total) % 37]


def _normalize(text: str, bar_code_prefix: str) -> str:
    compact = "".join(text.split())
    if compact.startswith(bar_code_prefix):
        compact = compact[len(bar_code_prefix) :]
    # Upper-case ASCII letters only: str.upper() would fold e.g. 'ß' to 'SS' and change length.
    return compact.translate(_ASCII_UPPER)


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_alphabet(data: str, what: str) -> None:
    for position, ch in enumerate(data, start=1):
        if ch not in _DATA_ALPHABET:
            raise IdentifierError(
                f"{what}: character {position} is outside the ISBT 128 alphabet (A-Z, 0-9)",
                code="ID_CHARACTER",
            )


def _check_length(data: str, expected: int, what: str) -> None:
    if not data:
        raise IdentifierError(f"{what}: empty", code="ID_EMPTY")
    if len(data) != expected:
        shown = len(data) if len(data) <= _MAX_INPUT else f"more than {_MAX_INPUT}"
        raise IdentifierError(
            f"{what}: {shown} characters, expected {expected} (data and check character)",
            code="ID_LENGTH",
        )


def _check_fin(fin: str, first_position: int, what: str) -> None:
    if not _FIN.fullmatch(fin):
        last = first_position + 4
        raise IdentifierError(
            f"{what}: characters {first_position}-{last} (facility identification number) "
            "must be a letter other than O followed by four digits",
            code="ID_FACILITY",
        )


def _check_year(year: str, first_position: int, what: str) -> None:
    if not _YEAR.fullmatch(year):
        raise IdentifierError(
            f"{what}: characters {first_position}-{first_position + 1} (year) must be two digits",
            code="ID_YEAR",
        )


def _check_check_character(data: str, check: str, what: str) -> None:
    if check not in _VALUE:
        raise IdentifierError(
            f"{what}: the check character is outside the MOD 37-2 alphabet",
            code="ID_CHECK_CHARACTER",
        )
    if mod37_2(data) != check:
        raise IdentifierError(
            f"{what}: check character does not match (corrupted or mistyped identifier)",
            code="ID_CHECK_CHARACTER",
        )


# --- COI -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Coi:
    """An ISBT 128 Chain of Identity identifier. ``str(coi)`` is the 16-character data form."""

    fin: str
    year: str
    sequence: str

    def __post_init__(self) -> None:
        _check_fin(self.fin, 3, "COI")
        _check_year(self.year, 8, "COI")
        if not _COI_SEQUENCE.fullmatch(self.sequence):
            raise IdentifierError(
                "COI: characters 10-15 (sequence) must be six of A-Z, 0-9", code="ID_SEQUENCE"
            )

    @property
    def body(self) -> str:
        """The 15 data characters, without the check character."""
        return f"{COI_PREFIX}{self.fin}{self.year}{self.sequence}"

    @property
    def check(self) -> str:
        return mod37_2(self.body)

    def __str__(self) -> str:
        return self.body + self.check


def parse_coi(text: str) -> Coi:
    """Parse a COI with its check character; raise IdentifierError (ID_*) if it is wrong."""
    if not isinstance(text, str):
        raise IdentifierError("COI: not text", code="ID_CHARACTER")
    if len(text) > _MAX_INPUT * 4:
        raise IdentifierError(
            f"COI: more than {_MAX_INPUT} characters, expected {COI_LENGTH + 1}", code="ID_LENGTH"
        )
    data = _normalize(text, COI_BAR_CODE_PREFIX)
    _check_length(data, COI_LENGTH + 1, "COI")
    _check_alphabet(data[:COI_LENGTH], "COI")
    if not data.startswith(COI_PREFIX):
        raise IdentifierError("COI: characters 1-2 must be CH", code="ID_PREFIX")
    coi = Coi(fin=data[2:7], year=data[7:9], sequence=data[9:15])
    _check_check_character(coi.body, data[15], "COI")
    return coi


def validate_coi(text: str) -> IdentifierError | None:
    """The error that :func:`parse_coi` would raise for ``text``, or None when it is valid."""
    try:
        parse_coi(text)
    except IdentifierError as error:
        return error
    return None


def format_coi(coi: Coi, *, spaced: bool = True) -> str:
    """Eye-readable form ``CH A9990 26 ABC123 K`` (or the compact data form)."""
    if not spaced:
        return str(coi)
    return f"{COI_PREFIX} {coi.fin} {coi.year} {coi.sequence} {coi.check}"


class RandomSource(Protocol):
    """Anything with ``randrange`` (``secrets.SystemRandom()`` in production)."""

    def randrange(self, stop: int, /) -> int: ...


def allocate_coi(fin: str, year: int, rng: RandomSource) -> Coi:
    """A new random COI for facility ``fin`` and ``year`` (0–99 or a four-digit year).

    Random, never derived from patient data (HIPAA §164.514(c)). Uniqueness against COIs
    already issued is the caller's job (the vault retries on a unique-constraint collision).
    """
    sequence = "".join(_SEQUENCE_ALPHABET[rng.randrange(36)] for _ in range(6))
    return Coi(fin=fin, year=f"{year % 100:02d}", sequence=sequence)


# --- DIN -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Din:
    """An ISBT 128 donation identification number. ``str(din)`` is 13 characters + check."""

    fin: str
    year: str
    sequence: str

    def __post_init__(self) -> None:
        _check_fin(self.fin, 1, "DIN")
        _check_year(self.year, 6, "DIN")
        if not _DIN_SEQUENCE.fullmatch(self.sequence):
            raise IdentifierError(
                "DIN: characters 8-13 (sequence number) must be six digits", code="ID_SEQUENCE"
            )

    @property
    def body(self) -> str:
        return f"{self.fin}{self.year}{self.sequence}"

    @property
    def check(self) -> str:
        return mod37_2(self.body)

    def __str__(self) -> str:
        return self.body + self.check


def parse_din(text: str) -> Din:
    """Parse a DIN with its keyboard check character; raise IdentifierError (ID_*)."""
    if not isinstance(text, str):
        raise IdentifierError("DIN: not text", code="ID_CHARACTER")
    if len(text) > _MAX_INPUT * 4:
        raise IdentifierError(
            f"DIN: more than {_MAX_INPUT} characters, expected {DIN_LENGTH + 1}", code="ID_LENGTH"
        )
    data = _normalize(text, DIN_BAR_CODE_PREFIX)
    _check_length(data, DIN_LENGTH + 1, "DIN")
    _check_alphabet(data[:DIN_LENGTH], "DIN")
    din = Din(fin=data[0:5], year=data[5:7], sequence=data[7:13])
    _check_check_character(din.body, data[13], "DIN")
    return din


def validate_din(text: str) -> IdentifierError | None:
    try:
        parse_din(text)
    except IdentifierError as error:
        return error
    return None


def format_din(din: Din, *, spaced: bool = True) -> str:
    """Eye-readable form ``A9990 26 123456 K``."""
    if not spaced:
        return str(din)
    return f"{din.fin} {din.year} {din.sequence} {din.check}"


def allocate_din(fin: str, year: int, number: int) -> Din:
    """The DIN with sequence ``number`` (0–999999) for a collection facility and year."""
    if not 0 <= number <= 999_999:
        raise IdentifierError("DIN: sequence number must be 0-999999", code="ID_SEQUENCE")
    return Din(fin=fin, year=f"{year % 100:02d}", sequence=f"{number:06d}")
