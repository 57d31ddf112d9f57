"""The table rules find exactly the planted faults of a sandbox program, and nothing on a clean one.

Canonical tables are built straight from the sandbox's pure world model (the records each
journey holds), so these tests pin the rules' semantics independently of ingest.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import pytest

from cmohub.contracts.store import load_product_catalog
from cmohub.reconcile.catalog import RuleCode
from cmohub.reconcile.rules import RuleFinding, evaluate_table_rules
from cmohub.sandbox.faults import Fault
from cmohub.sandbox.program import Journey, ProgramBuilder, ProgramConfig
from cmohub.sandbox.tables import build_journeys, canonical_tables

TABLE_RULE_KEYS: dict[RuleCode, tuple[str, ...]] = {
    RuleCode.DIN_MULTIPLE_COI: ("din",),
    RuleCode.BATCH_COI_MISMATCH: ("batch_id",),
    RuleCode.REAGENT_EXPIRED: ("batch_id", "step_no", "lot_number"),
    RuleCode.OPERATOR_NOT_CERTIFIED: ("batch_id", "step_no", "operator_id"),
    RuleCode.EM_ACTION_LIMIT: ("sample_id",),
    RuleCode.DEVIATION_OPEN_ON_RELEASED: ("deviation_id",),
    RuleCode.QC_OUT_OF_SPEC: ("result_id",),
    RuleCode.RELEASE_BEFORE_RESULTS: ("batch_id", "test_code"),
    RuleCode.INFUSION_BEFORE_RELEASE: ("batch_id",),
    RuleCode.VEIN_TO_VEIN_OVER_TARGET: ("coi",),
}


def build(
    patients: int, faults: Iterable[Fault], start: date
) -> tuple[ProgramBuilder, list[Journey]]:
    config = ProgramConfig(
        patients=patients, days=45, seed=11, start=start, faults=frozenset(faults)
    )
    return build_journeys(config)


def keyed(finding: RuleFinding) -> tuple[object, ...]:
    key = finding.key_dict()
    return (finding.rule, *(key.get(name) for name in TABLE_RULE_KEYS[finding.rule]))


def planted(journeys: list[Journey]) -> set[tuple[object, ...]]:
    out = set()
    for j in journeys:
        for p in j.planted:
            if p.rule in TABLE_RULE_KEYS:
                out.add((p.rule, *(p.key.get(name) for name in TABLE_RULE_KEYS[p.rule])))
    return out


@pytest.mark.parametrize("start", [date(2026, 1, 5), date(2026, 3, 2)], ids=["spec-change", "dst"])
def test_a_clean_program_raises_nothing(start: date) -> None:
    builder, journeys = build(120, (), start)
    assert evaluate_table_rules(canonical_tables(builder, journeys), load_product_catalog()) == []


@pytest.mark.parametrize("start", [date(2026, 1, 5), date(2026, 3, 2)], ids=["spec-change", "dst"])
def test_every_planted_fault_is_found_by_its_rule_and_nothing_else(start: date) -> None:
    builder, journeys = build(400, Fault, start)
    findings = evaluate_table_rules(canonical_tables(builder, journeys), load_product_catalog())
    expected = planted(journeys)
    assert expected, "the program planted no table-rule faults"
    assert {keyed(f) for f in findings} == expected
    assert len(findings) == len(expected)  # one finding per fault, no duplicates


def test_findings_explain_themselves_without_identifiers() -> None:
    builder, journeys = build(400, Fault, date(2026, 1, 5))
    findings = evaluate_table_rules(canonical_tables(builder, journeys), load_product_catalog())
    identifiers = {j.patient.mrn for j in journeys} | {j.patient.family for j in journeys}
    for finding in findings:
        text = finding.description + finding.evidence_json()
        assert finding.description and not any(i in text for i in identifiers)
    qc = next(f for f in findings if f.rule is RuleCode.QC_OUT_OF_SPEC)
    assert "outside specification v" in qc.description
