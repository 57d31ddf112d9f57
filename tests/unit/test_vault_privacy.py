"""Privacy invariant 1 for the vault: no identifier value in any exception, log line or export.

Every operation runs — successes, refusals, malformed input, tampering — with canary
identifiers and demographics, logging at DEBUG (SQLAlchemy's SQL log included). Then every
log line, every exception (with its causes), every result's repr and the audit report are
searched for the canaries.
"""

from __future__ import annotations

import io
import logging
import sqlite3
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest
from tests.vault_support import OFFICER, SERVICE, SYSTEM

from cmohub.errors import HubError
from cmohub.identifiers import Coi
from cmohub.identity import Demographics, SubjectIdentity, TokenizeRequest
from cmohub.sensitive import Sensitive
from cmohub.vault import EnrollmentAssignment, MemoryKeyProvider, Roles, Vault
from cmohub.vault.report import build_report, render_csv, render_html

CANARIES = ("CANARY-MRN-PRIV", "Canaryfam", "Canarygiv", "1931-02-03")


def person(n: int, system: str = SYSTEM) -> SubjectIdentity:
    return SubjectIdentity(
        system=system,
        value=Sensitive(f"CANARY-MRN-PRIV-{n:03d}"),
        demographics=Demographics(
            Sensitive(f"Canaryfam{n}"), Sensitive(f"Canarygiv{n}"), Sensitive("1931-02-03")
        ),
    )


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger("cmohub"), logging.getLogger("sqlalchemy.engine")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield stream
    for lg, level in saved:
        lg.removeHandler(handler)
        lg.setLevel(level)


def _texts(error: BaseException | None) -> Iterator[str]:
    while error is not None:
        yield str(error)
        yield repr(error)
        if isinstance(error, HubError):
            yield str(error.to_dict())
        error = error.__cause__ or error.__context__


def test_no_identifier_value_leaves_the_vault(tmp_path: Path, logs: io.StringIO) -> None:
    vault = Vault(
        f"sqlite:///{tmp_path}/vault.sqlite",
        MemoryKeyProvider.generated(),
        roles=Roles({"alice": ["privacy_officer"]}),
    )
    vault.init(actor=SERVICE)
    seen: list[str] = []
    errors: list[str] = []

    def attempt(call: Callable[[], object]) -> object:
        try:
            result = call()
        except HubError as error:
            errors.extend(_texts(error))
            return None
        seen.append(repr(result))
        return result

    cois = vault.tokenize_many(
        [TokenizeRequest(person(i), f"ENR-{i}") for i in range(5)], actor=SERVICE
    )
    different = SubjectIdentity(
        SYSTEM, Sensitive("CANARY-MRN-PRIV-000"), Demographics(birth_date=Sensitive("1931-02-04"))
    )
    attempt(
        lambda: vault.tokenize_many_detailed([TokenizeRequest(different, "ENR-0")], actor=SERVICE)
    )
    attempt(lambda: vault.tokenize(person(9, "https://hospital.example/mrn"), "E", actor=SERVICE))
    attempt(
        lambda: vault.tokenize(
            SubjectIdentity(SYSTEM, Sensitive("CANARY-MRN-PRIV-\x01")), "E", actor=SERVICE
        )
    )
    attempt(
        lambda: vault.tokenize(
            SubjectIdentity(SYSTEM, Sensitive("CANARY-MRN-PRIV-" * 20)), "E", actor=SERVICE
        )
    )
    attempt(lambda: vault.tokenize(person(10), "CANARY-MRN-PRIV-EVENT-\x02", actor=SERVICE))
    attempt(lambda: vault.lookup(person(11), "E", actor=SERVICE))
    attempt(
        lambda: vault.enroll_many([EnrollmentAssignment(person(12), "E", cois[0])], actor=SERVICE)
    )
    attempt(
        lambda: vault.enroll_many(
            [EnrollmentAssignment(person(0), "ENR-0", Coi("A9990", "26", "AAAAAA"))], actor=SERVICE
        )
    )
    attempt(lambda: vault.merge(person(1), person(2), actor=SERVICE, reason="A40"))
    vault.tokenize(person(1), "ENR-X", actor=SERVICE)
    vault.tokenize(person(2), "ENR-X", actor=SERVICE)
    attempt(lambda: vault.merge(person(1), person(2), actor=SERVICE, reason="A40 again"))
    attempt(lambda: vault.reveal(str(cois[3]), actor=SERVICE, purpose="p", ticket="t"))
    attempt(lambda: vault.reveal(str(cois[3]), actor=OFFICER, purpose="", ticket="t"))
    attempt(lambda: vault.withdraw(str(cois[4]), actor=OFFICER, reason="consent withdrawn"))
    attempt(lambda: vault.reveal(str(cois[4]), actor=OFFICER, purpose="p", ticket="t"))
    with sqlite3.connect(tmp_path / "vault.sqlite") as con:
        con.execute(
            "UPDATE vault_coi SET sealed = substr(sealed, 1, 40) WHERE coi = ?", (str(cois[3]),)
        )
    attempt(lambda: vault.reveal(str(cois[3]), actor=OFFICER, purpose="p", ticket="t"))
    attempt(lambda: vault.rotate_index_key(actor=SERVICE))
    attempt(lambda: vault.rotate_kek(actor=SERVICE))
    attempt(lambda: vault.verify_many([str(c) for c in cois], actor=SERVICE))
    attempt(vault.status)
    granted = vault.reveal(str(cois[2]), actor=OFFICER, purpose="p", ticket="t")
    assert granted.identity.value.reveal() == "CANARY-MRN-PRIV-002"  # the one way out
    seen.append(repr(granted))

    assert len(errors) >= 20  # the refusals and faults above really happened
    records = vault.audit_records(date(2000, 1, 1), actor=OFFICER)
    report = build_report(records, since=date(2000, 1, 1), verification=vault.verify_audit())
    exports = [render_csv(report), render_html(report), repr(records)]
    text = "\n".join([logs.getvalue(), *errors, *seen, *exports])
    assert "SELECT" in logs.getvalue()  # SQL was logged, with its parameters hidden
    for canary in CANARIES:
        assert canary not in text, canary
