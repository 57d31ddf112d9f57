"""What the vault's tests share: the sandbox identifier system, the actors, synthetic requests.

Identifier values start with ``CANARY-MRN-`` so that the canary scans find any that leaks.
"""

from __future__ import annotations

from cmohub.identity import Actor, SubjectIdentity, TokenizeRequest
from cmohub.sensitive import Sensitive
from cmohub.vault import Roles

SYSTEM = "urn:cmohub:sandbox:mrn:A9990"
SERVICE = Actor("pipeline:clinical_sync", "service", feed="fhir_clinical")
ENGINEER = Actor("bob", "data_engineer")
OFFICER = Actor("alice", "privacy_officer")
ROLES = Roles({"alice": ["privacy_officer"]})


def canary_requests(tag: str, start: int, count: int) -> list[TokenizeRequest]:
    """``count`` requests for therapy event E1, values ``CANARY-MRN-<tag>-<start...>``."""
    return [
        TokenizeRequest(
            SubjectIdentity(system=SYSTEM, value=Sensitive(f"CANARY-MRN-{tag}-{i:05d}")), "E1"
        )
        for i in range(start, start + count)
    ]
