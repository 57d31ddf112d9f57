"""The sandbox's world model: journeys are coherent, clean data is clean, faults are exact.

A small reference evaluation of every reconciliation rule runs over the pure journeys (no
files): on a program with every fault it must find exactly what the plan planted — same
rule, same key — and on a program without faults it must find nothing. Date rules are
evaluated both on UTC dates and on the local dates of the site concerned, and must agree:
the sandbox promises that no time-zone convention can flip an outcome.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from functools import cache
from itertools import pairwise

import pytest

from cmohub.contracts.specifications import ProductCatalogEntry
from cmohub.contracts.store import load_product_catalog
from cmohub.domain import Decision, DeviationStatus, QcStatus, TemperatureClass
from cmohub.identifiers import validate_coi, validate_din
from cmohub.reconcile.catalog import RuleCode
from cmohub.sandbox.faults import (
    FILE_FAULTS,
    RULE_OF,
    Fault,
    PlantedFault,
    occurrences,
    parse_fault_selection,
    plan_faults,
)
from cmohub.sandbox.program import (
    LOGGER_MAX_GAP_MINUTES,
    Journey,
    ProgramBuilder,
    ProgramConfig,
    iter_readings,
)
from cmohub.sandbox.timeutil import local_date
from cmohub.sandbox.world import SITE_BY_FIN, OperatorRoster

WRITER_FAULTS = frozenset(f for f in Fault if f.value.startswith("malformed_")) | FILE_FAULTS


@cache
def catalog() -> dict[str, ProductCatalogEntry]:
    return load_product_catalog()


def build(
    patients: int, faults: Iterable[Fault], *, seed: int = 11, start: date = date(2026, 1, 5)
) -> tuple[ProgramBuilder, list[Journey]]:
    selected = frozenset(faults)
    config = ProgramConfig(patients=patients, days=45, seed=seed, start=start, faults=selected)
    plan = plan_faults(selected, patients, random.Random(f"plan:{seed}"))
    builder = ProgramBuilder(config, catalog(), plan)
    return builder, list(builder.journeys())


# --- a reference evaluation of the catalog's rules over journeys --------------------------


def _dates(when: datetime, fin: str) -> tuple[date, date]:
    """The UTC date and the local date at ``fin`` of an instant."""
    return when.date(), local_date(when, SITE_BY_FIN[fin].time_zone)


def _outside(cls: TemperatureClass, celsius: float) -> bool:
    return (cls.lower_celsius is not None and celsius < cls.lower_celsius) or (
        cls.upper_celsius is not None and celsius > cls.upper_celsius
    )


def _agree(found: list[bool]) -> bool:
    assert len(set(found)) == 1, "UTC and local dates disagree about a rule"
    return found[0]


def evaluate(builder: ProgramBuilder, journeys: list[Journey]) -> set[tuple[object, ...]]:
    """Every rule violation in the program, keyed like :func:`truth_key`."""
    found: set[tuple[object, ...]] = set()
    enrolled = {j.coi for j in journeys}
    cois_of_din: dict[str, set[str]] = defaultdict(set)
    for j in journeys:
        cois_of_din[j.collection.din].add(j.collection.coi)
    steps_by_suite = defaultdict(list)
    for j in journeys:
        for step in j.steps:
            steps_by_suite[step.suite_id].append(step)
    for din, cois in cois_of_din.items():
        if len(cois) > 1:
            found.add((RuleCode.DIN_MULTIPLE_COI, din))
    for j in journeys:
        entry = catalog()[j.product]
        roster: OperatorRoster = builder.rosters[j.cmo]
        if j.stray_custody is not None and validate_coi(j.stray_custody.coi_text) is not None:
            found.add((RuleCode.COI_CHECK_INVALID, j.stray_custody.event_id))
        if j.stray_batch is not None and j.stray_batch.coi not in enrolled:
            found.add((RuleCode.COI_UNKNOWN, j.stray_batch.batch_id))
        if j.batch.coi not in cois_of_din.get(j.batch.din, set()):
            found.add((RuleCode.BATCH_COI_MISMATCH, j.batch.batch_id))
        for plan in j.shipments:
            minutes_out = 0
            for lp in plan.legs:
                ks = [k for k, c in iter_readings(lp.trace)]
                minutes_out += sum(
                    1 for _, c in iter_readings(lp.trace) if _outside(plan.temperature_class, c)
                )
                gaps = [b - a for a, b in pairwise(ks)]
                if (
                    any(g > LOGGER_MAX_GAP_MINUTES for g in gaps)
                    or ks[0] > LOGGER_MAX_GAP_MINUTES
                    or lp.trace.minutes - ks[-1] > LOGGER_MAX_GAP_MINUTES
                ):
                    found.add((RuleCode.LOGGER_GAP, lp.trace.logger_id))
            if minutes_out > entry.product.excursion_budget_minutes:
                found.add((RuleCode.TEMPERATURE_EXCURSION, plan.shipment.shipment_id))
            possessor = SITE_BY_FIN[plan.shipment.origin].pgln
            events = sorted(plan.custody, key=lambda e: e.event_time)
            broken = False
            for before, event in zip([None, *events], events, strict=False):
                if before is not None and event.event_time - before.event_time > timedelta(
                    minutes=plan.legs[0].leg.max_silence_minutes
                ):
                    broken = True
                if event.source_party is not None:
                    broken |= event.source_party != possessor
                    possessor = event.destination_party or possessor
            broken |= possessor != SITE_BY_FIN[plan.shipment.destination].pgln
            if broken:
                found.add((RuleCode.CUSTODY_GAP, plan.shipment.shipment_id))
        for m in j.materials:
            if _agree([m.expiry_on < d for d in _dates(m.used_at, j.cmo)]):
                found.add((RuleCode.REAGENT_EXPIRED, m.batch_id, m.step_no, m.lot_number))
        for step in j.steps:
            if not _agree(
                [
                    roster.certified(step.operator_id, step.step_code, d)
                    for d in _dates(step.started_at, j.cmo)
                ]
            ):
                found.add((RuleCode.OPERATOR_NOT_CERTIFIED, step.batch_id, step.step_no))
        for _, sample in j.monitoring:
            if sample.value > sample.action_limit and any(
                s.started_at <= sample.sampled_at <= s.ended_at
                for s in steps_by_suite[sample.suite_id]
            ):
                found.add((RuleCode.EM_ACTION_LIMIT, sample.sample_id))
        released = j.release.decision is Decision.RELEASED
        for d in j.deviations:
            if released and d.status is DeviationStatus.OPEN and d.patient_impact:
                found.add((RuleCode.DEVIATION_OPEN_ON_RELEASED, d.deviation_id))
        for r in j.qc:
            verdicts = []
            for day in _dates(r.tested_at, j.cmo):
                spec = entry.in_force_on(day)
                limit = next((x for x in spec.limits if x.test_code == r.test_code), None)
                if limit is None:
                    verdicts.append(False)
                elif limit.allowed_text is not None:
                    verdicts.append(r.value_text not in limit.allowed_text)
                else:
                    assert r.value is not None
                    verdicts.append(
                        (limit.lower is not None and r.value < limit.lower)
                        or (limit.upper is not None and r.value > limit.upper)
                    )
            if _agree(verdicts):
                found.add((RuleCode.QC_OUT_OF_SPEC, r.result_id))
        assert j.release.spec_version is not None
        spec = entry.version(j.release.spec_version)
        for limit in spec.limits:
            ready = [
                r
                for r in j.qc
                if r.test_code == limit.test_code
                and r.status is QcStatus.FINAL
                and r.tested_at <= j.release.decided_at
            ]
            if limit.required and not ready:
                found.add((RuleCode.RELEASE_BEFORE_RESULTS, j.batch.batch_id, limit.test_code))
        if j.infusion.infused_at < j.release.decided_at:
            found.add((RuleCode.INFUSION_BEFORE_RELEASE, j.batch.batch_id))
        target = timedelta(days=entry.product.vein_to_vein_target_days)
        if j.infusion.infused_at - j.collection.collected_at > target:
            found.add((RuleCode.VEIN_TO_VEIN_OVER_TARGET, j.coi))
    return found


def truth_key(planted: PlantedFault) -> tuple[object, ...]:
    k = planted.key
    keys: dict[RuleCode, tuple[object, ...]] = {
        RuleCode.TEMPERATURE_EXCURSION: (k.get("shipment_id"),),
        RuleCode.LOGGER_GAP: (k.get("logger_id"),),
        RuleCode.CUSTODY_GAP: (k.get("shipment_id"),),
        RuleCode.DIN_MULTIPLE_COI: (k.get("din"),),
        RuleCode.BATCH_COI_MISMATCH: (k.get("batch_id"),),
        RuleCode.REAGENT_EXPIRED: (k.get("batch_id"), k.get("step_no"), k.get("lot_number")),
        RuleCode.OPERATOR_NOT_CERTIFIED: (k.get("batch_id"), k.get("step_no")),
        RuleCode.EM_ACTION_LIMIT: (k.get("sample_id"),),
        RuleCode.DEVIATION_OPEN_ON_RELEASED: (k.get("deviation_id"),),
        RuleCode.QC_OUT_OF_SPEC: (k.get("result_id"),),
        RuleCode.RELEASE_BEFORE_RESULTS: (k.get("batch_id"), k.get("test_code")),
        RuleCode.INFUSION_BEFORE_RELEASE: (k.get("batch_id"),),
        RuleCode.VEIN_TO_VEIN_OVER_TARGET: (k.get("coi"),),
        RuleCode.COI_CHECK_INVALID: (k.get("event_id"),),
        RuleCode.COI_UNKNOWN: (k.get("batch_id"),),
    }
    return (planted.rule, *keys[planted.rule])


def planted_of(journeys: list[Journey]) -> Iterator[PlantedFault]:
    for j in journeys:
        yield from j.planted


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [date(2026, 1, 5), date(2026, 3, 2)], ids=["spec-change", "dst"])
def test_a_clean_program_breaks_no_rule(start: date) -> None:
    # 2026-01-05 + 45 days crosses SBX-CART-01 v2 (2026-02-01); March crosses both DST changes.
    builder, journeys = build(160, (), start=start)
    assert evaluate(builder, journeys) == set()
    assert not list(planted_of(journeys))
    if start < date(2026, 2, 1):
        # Some viabilities pass v1 (>= 70 %) but would fail v2 (>= 75 %): a reconciler that
        # applied the wrong version would raise false exceptions.
        assert any(
            70 <= r.value < 75
            for j in journeys
            for r in j.qc
            if r.test_code == "VIAB"
            and r.value is not None
            and r.tested_at.date() < date(2026, 1, 30)
        )


@pytest.mark.parametrize("start", [date(2026, 1, 5), date(2026, 3, 2)], ids=["spec-change", "dst"])
def test_every_planted_fault_is_caught_by_exactly_its_rule(start: date) -> None:
    patient_faults = frozenset(Fault) - WRITER_FAULTS
    builder, journeys = build(400, patient_faults, start=start)
    planted = list(planted_of(journeys))
    assert {p.fault for p in planted} == patient_faults
    assert evaluate(builder, journeys) == {truth_key(p) for p in planted}
    assert len({truth_key(p) for p in planted}) == len(planted), "two faults share one key"


def test_each_fault_flag_plants_only_its_fault() -> None:
    for fault in sorted(Fault.__members__.values()):
        if fault in WRITER_FAULTS:
            continue
        builder, journeys = build(40, {fault})
        planted = list(planted_of(journeys))
        assert [p.fault for p in planted] == [fault] * occurrences(40), fault
        assert all(p.rule is RULE_OF[fault] for p in planted)
        assert evaluate(builder, journeys) == {truth_key(p) for p in planted}, fault


def test_clean_journeys_follow_the_therapy_timeline() -> None:
    _, journeys = build(120, ())
    for j in journeys:
        moments = [
            j.enrolled_at,
            j.order.ordered_at,
            j.collection.collected_at,
            j.starting.legs[0].leg.departed_at,
            j.starting.delivered_at,
            j.batch.started_at,
            j.batch.completed_at,
            min(r.tested_at for r in j.qc),
            max(r.tested_at for r in j.qc),
            j.release.decided_at,
            j.finished.legs[0].leg.departed_at,
            j.finished.delivered_at,
            j.infusion.infused_at,
        ]
        assert moments == sorted(moments), j.therapy_event
        steps = [(s.started_at, s.ended_at) for s in j.steps]
        assert all(a < b for a, b in steps)
        assert all(prev[1] <= nxt[0] for prev, nxt in pairwise(steps))
        for plan in j.shipments:
            legs = [lp.leg for lp in plan.legs]
            assert [(leg.origin, leg.destination) for leg in legs] == [
                (plan.shipment.origin, "A9995"),
                ("A9995", plan.shipment.destination),
            ]


def test_identifiers_are_valid_unique_and_synthetic() -> None:
    _, journeys = build(200, ())
    cois = [j.coi for j in journeys]
    assert len(set(cois)) == len(cois)
    assert all(validate_coi(c) is None and c.startswith("CHA9999") for c in cois)
    dins = [j.collection.din for j in journeys]
    assert len(set(dins)) == len(dins)
    assert all(
        validate_din(d) is None and d[:5] == j.site.fin for d, j in zip(dins, journeys, strict=True)
    )
    for j in journeys:
        p = j.patient
        assert p.mrn.startswith("SBX-MRN-")
        assert p.family in ("Testpatient",) or p.family.startswith("FamCNRY")
        assert p.email.endswith(".invalid")
        assert j.site.fin in ("A9990", "A9991", "A9992", "A9993")


def test_canaries_carry_unique_greppable_tokens() -> None:
    _, journeys = build(400, ())
    canaries = [j for j in journeys if j.canary]
    assert len(canaries) >= 2
    assert any(j.site.fin == "A9992" for j in canaries), "one canary must travel through HL7"
    tokens = [t for j in canaries for t in j.patient.canary_tokens.values()]
    assert len(set(tokens)) == len(tokens)
    for j in canaries:
        t = j.patient.canary_tokens
        assert {"mrn", "family", "given", "phone", "email", "address", "birth_date"} <= set(t)
        assert j.patient.birth_date.year < 1910  # an unusual year, easy to grep
    others = [j for j in journeys if not j.canary]
    fields = [(o.patient.mrn, o.patient.family, o.patient.given, o.patient.phone) for o in others]
    assert not any(tok in " ".join(f) for tok in tokens for f in fields)


def test_same_seed_same_journeys_and_a_different_seed_differs() -> None:
    _, first = build(30, frozenset(Fault) - WRITER_FAULTS)
    _, again = build(30, frozenset(Fault) - WRITER_FAULTS)
    _, other = build(30, frozenset(Fault) - WRITER_FAULTS, seed=12)
    assert first == again
    assert [j.coi for j in first] != [j.coi for j in other]


def test_readings_are_regenerated_identically_and_cover_the_leg() -> None:
    _, journeys = build(5, ())
    trace = journeys[0].starting.legs[1].trace
    readings = list(iter_readings(trace))
    assert readings == list(iter_readings(trace))
    assert [k for k, _ in readings] == list(range(trace.minutes + 1))
    assert len(readings) == trace.count


def test_fault_selection_parses_names_groups_and_rejects_unknown() -> None:
    assert parse_fault_selection("none") == frozenset()
    assert parse_fault_selection("all") == frozenset(Fault)
    assert parse_fault_selection("custody_gap, malformed") == {
        Fault.CUSTODY_GAP,
        *(f for f in Fault if f.value.startswith("malformed_")),
    }
    with pytest.raises(Exception, match="SANDBOX_FAULT_UNKNOWN"):
        parse_fault_selection("custody_gap,bogus")


def test_a_program_too_small_reports_what_it_could_not_plant() -> None:
    plan = plan_faults(frozenset(Fault), 6, random.Random(1))
    hosted = len(plan.hosts)
    assert hosted == 6 - 1 - len(plan.canaries)  # patient 0 and canaries host nothing
    assert sum(plan.not_planted.values()) == len(Fault) - len(FILE_FAULTS) - hosted
