"""Resolve the pending identity fields of mapped rows through the vault, in one batch (pure).

The vault is reached only through :class:`cmohub.identity.IdentityPort`, passed in: one
``tokenize_many`` call for every subject identity of the delivery and one ``verify_many``
call for its distinct COIs. Outcomes:

* tokenized identities become their COI (data form);
* a verified COI the vault knows stays as it is; one it never issued rejects the row
  (``COI_UNKNOWN``); a withdrawn one is kept with a ``COI_WITHDRAWN`` warning (consent was
  withdrawn: the identifier is gone, the COI stays for traceability).

Local check-character failures were already caught by the engine (``COI_CHECK_INVALID``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cmohub.contracts.model import Severity
from cmohub.identity import Actor, CoiStatus, IdentityPort, TokenizeRequest
from cmohub.mapping.engine import (
    MappedRow,
    MappingIssue,
    MappingResult,
    PendingTokenize,
    PendingVerify,
    RejectedRecord,
)


def resolve_identities(result: MappingResult, port: IdentityPort, *, actor: Actor) -> MappingResult:
    """Replace pending identities with COIs; reject rows whose COI the vault does not know."""
    requests: list[TokenizeRequest] = []
    request_slots: list[tuple[int, str]] = []
    to_verify: dict[str, None] = {}
    for index, row in enumerate(result.rows):
        for name, value in row.values.items():
            if isinstance(value, PendingTokenize):
                requests.append(value.request)
                request_slots.append((index, name))
            elif isinstance(value, PendingVerify):
                to_verify.setdefault(value.coi, None)
    if not requests and not to_verify:
        return result
    tokens: dict[tuple[int, str], str] = {}
    if requests:
        cois = port.tokenize_many(requests, actor=actor)
        tokens = {slot: str(coi) for slot, coi in zip(request_slots, cois, strict=True)}
    statuses: dict[str, CoiStatus] = {}
    if to_verify:
        ordered = list(to_verify)
        statuses = dict(zip(ordered, port.verify_many(ordered, actor=actor), strict=True))

    rows: list[MappedRow] = []
    rejected: list[RejectedRecord] = list(result.rejected)
    for index, row in enumerate(result.rows):
        values: dict[str, Any] = {}
        problems: list[MappingIssue] = []
        warnings = list(row.warnings)
        for name, value in row.values.items():
            if isinstance(value, PendingTokenize):
                values[name] = tokens[(index, name)]
            elif isinstance(value, PendingVerify):
                status = statuses[value.coi]
                values[name] = value.coi
                if status is CoiStatus.UNKNOWN:
                    problems.append(
                        MappingIssue(
                            "COI_UNKNOWN",
                            Severity.ERROR,
                            row.locator,
                            name,
                            None,
                            "the vault never issued this COI",
                        )
                    )
                elif status is CoiStatus.WITHDRAWN:
                    warnings.append(
                        MappingIssue(
                            "COI_WITHDRAWN",
                            Severity.WARNING,
                            row.locator,
                            name,
                            None,
                            "consent was withdrawn for this COI",
                        )
                    )
            else:
                values[name] = value
        if problems:
            rejected.append(RejectedRecord(row.locator, tuple(warnings + problems), values))
        else:
            rows.append(MappedRow(row.locator, values, tuple(warnings)))
    return replace(result, rows=tuple(rows), rejected=tuple(rejected))
