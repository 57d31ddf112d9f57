"""The sponsor's enrollment register (``sponsor/enrollments.ndjson``) as vault assignments.

One JSON object per line (docs/sandbox.md)::

    {"therapy_event": "SBX-TE-000001",
     "subject": {"system": "urn:cmohub:sandbox:mrn:A9991", "value": "SBX-MRN-A9991-000001"},
     "demographics": {"family": "...", "given": "...", "birth_date": "1992-08-20"},
     "coi": "CHA99992634LT9BH", ...}

Other keys (product, site, enrolled_at) are ignored here. A line that cannot be used raises
:class:`~cmohub.errors.VaultError` ``VAULT_ENROLLMENT_INVALID`` naming the line and the key,
never a value. :meth:`cmohub.vault.Vault.enroll_many` then adopts the assignments.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cmohub.errors import VaultError
from cmohub.identity import Demographics, SubjectIdentity
from cmohub.sensitive import Sensitive
from cmohub.vault.results import EnrollmentAssignment


def _invalid(message: str, where: str) -> VaultError:
    return VaultError(message, code="VAULT_ENROLLMENT_INVALID", where=where)


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"'{key}' must be non-empty text", where)
    return value


def parse_enrollment(record: Any, *, where: str = "record") -> EnrollmentAssignment:
    """One enrollment record as an assignment (identifiers wrapped as Sensitive at once)."""
    if not isinstance(record, Mapping):
        raise _invalid("an enrollment must be a JSON object", where)
    subject = record.get("subject")
    if not isinstance(subject, Mapping):
        raise _invalid("'subject' must be an object with 'system' and 'value'", where)
    demographics = record.get("demographics") or {}
    if not isinstance(demographics, Mapping):
        raise _invalid("'demographics' must be an object", where)

    def demographic(key: str) -> Sensitive[str] | None:
        value = demographics.get(key)
        return Sensitive(value) if isinstance(value, str) and value.strip() else None

    identity = SubjectIdentity(
        system=_text(subject, "system", where),
        value=Sensitive(_text(subject, "value", where)),
        demographics=Demographics(
            family_name=demographic("family"),
            given_name=demographic("given"),
            birth_date=demographic("birth_date"),
        ),
    )
    return EnrollmentAssignment(
        identity=identity,
        therapy_event=_text(record, "therapy_event", where),
        coi=_text(record, "coi", where),
    )


def load_enrollments(lines: Iterable[str]) -> list[EnrollmentAssignment]:
    """Assignments from NDJSON lines (blank lines skipped)."""
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(line)
        except ValueError:
            raise _invalid("not valid JSON", where) from None
        out.append(parse_enrollment(record, where=where))
    return out
