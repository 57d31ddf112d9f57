"""Every document of ../shared/corpus/epcis/ is read or refused with a clear code.

First the format adapter's view (what each event is: custody, sensor readings, an error
declaration, unreadable), then the pipeline's: each document staged through the logistics
feeds into a lake, where every event ends staged, quarantined with a code, or suppressed,
and the run's ledger balances.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cmohub.errors import ParseError
from cmohub.formats.epcis import (
    EpcisDocument,
    parse_epcis_document,
    resolve_events,
    sensor_readings,
)
from cmohub.identity import Actor, CoiStatus

pytestmark = pytest.mark.corpus

#: file -> (kind, context, outcome of each event in document order)
EXPECTED: dict[str, tuple[str, str, tuple[str, ...]] | str] = {
    "EPCIS-JSON-Schema.json": "PARSE_EPCIS_NOT_A_DOCUMENT",
    "EPCISQueryDocument.jsonld": ("EPCISQueryDocument", "standard", ("no_coi", "no_coi")),
    "ErrorDeclarationAndCorrectiveEvent.jsonld": (
        "EPCISDocument",
        "standard",
        ("declaration", "no_coi"),
    ),
    "Example_9.6.1-ObjectEvent.jsonld": ("EPCISDocument", "standard", ("no_coi", "no_coi")),
    "Example_9.6.4-TransformationEvent.jsonld": ("EPCISDocument", "standard", ("no_coi",)),
    "PersistentDisposition-example.jsonld": ("EPCISDocument", "standard", ("no_coi", "no_coi")),
    "SensorDataExample1.jsonld": ("EPCISDocument", "standard", ("sensor",)),
    "SensorDataExample12.jsonld": ("EPCISDocument", "standard", ("declaration",)),
    "SensorDataExample13.jsonld": ("EPCISDocument", "standard", ("sensor",)),
    "SensorDataExample2.jsonld": ("EPCISDocument", "standard", ("sensor",)),
    "SensorDataExample5.jsonld": ("EPCISDocument", "standard", ("sensor",)),
    "SensorDataExample5.simple-context.jsonld": ("EPCISDocument", "simple", ("sensor",)),
    "SensorDataExample9.jsonld": ("EPCISDocument", "standard", ("sensor",)),
    "object_event_all_possible_fields.jsonld": ("EPCISDocument", "standard", ("declaration",)),
    "transformation_event_all_possible_fields.jsonld": (
        "EPCISDocument",
        "standard",
        ("declaration",),
    ),
}

#: sensor documents -> (readings, rejected report codes, summaries, other quantities)
SENSOR: dict[str, tuple[int, tuple[str, ...], int, int]] = {
    "SensorDataExample1.jsonld": (3, (), 0, 9),
    "SensorDataExample13.jsonld": (0, ("EPCIS_SENSOR_DEVICE_MISSING",) * 2, 0, 0),
    "SensorDataExample2.jsonld": (0, (), 1, 3),
    "SensorDataExample5.jsonld": (6, (), 0, 0),
    "SensorDataExample5.simple-context.jsonld": (6, (), 0, 0),
    "SensorDataExample9.jsonld": (0, ("EPCIS_SENSOR_ERROR_CONDITION",), 0, 1),
}


def outcomes(document: EpcisDocument) -> tuple[str, ...]:
    resolution = resolve_events(document.events)
    by_index: dict[int, str] = {r.index: f"rejected:{r.code}" for r in document.rejected}
    for event in resolution.declarations:
        by_index[event.index] = "declaration"
    for event in resolution.duplicates:
        by_index[event.index] = "duplicate"
    for event in resolution.retracted:
        by_index[event.index] = "retracted"
    for event in resolution.kept:
        if event.is_sensor_event:
            by_index[event.index] = "sensor"
        else:
            by_index[event.index] = "custody" if event.coi else "no_coi"
    return tuple(by_index[i] for i in range(1, document.received + 1))


def test_the_corpus_is_what_this_test_expects(corpus: Path) -> None:
    assert sorted(p.name for p in (corpus / "epcis").iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_document_is_read_or_refused_with_a_code(corpus: Path, name: str) -> None:
    data = (corpus / "epcis" / name).read_bytes()
    expected = EXPECTED[name]
    if isinstance(expected, str):
        with pytest.raises(ParseError) as raised:
            parse_epcis_document(data)
        assert raised.value.code == expected
        return
    document = parse_epcis_document(data)
    assert (document.kind, document.context, outcomes(document)) == expected
    if name in SENSOR:
        readings = sensor_readings(resolve_events(document.events).kept)
        assert (
            len(readings.celsius),
            tuple(code for _, code, _ in readings.rejected),
            len(readings.summaries),
            readings.other_reports,
        ) == SENSOR[name]


def test_the_same_events_get_the_same_canonical_hash_in_any_wrapping(corpus: Path) -> None:
    plain = parse_epcis_document(
        (corpus / "epcis" / "Example_9.6.1-ObjectEvent.jsonld").read_bytes()
    )
    query = parse_epcis_document((corpus / "epcis" / "EPCISQueryDocument.jsonld").read_bytes())
    assert [e.key for e in plain.events] == [e.key for e in query.events]
    assert all(
        e.key.startswith("ni:///sha-256;") and e.key.endswith("?ver=CBV2.0") for e in plain.events
    )
    standard = (corpus / "epcis" / "SensorDataExample5.jsonld").read_bytes()
    simple = (corpus / "epcis" / "SensorDataExample5.simple-context.jsonld").read_bytes()
    a = parse_epcis_document(standard, gs1_sensor_hashes=True)
    b = parse_epcis_document(simple, gs1_sensor_hashes=True)
    assert a.events[0].key == b.events[0].key and a.events[0].key.startswith("ni:///sha-256;")
    assert (
        parse_epcis_document(standard).events[0].key == parse_epcis_document(simple).events[0].key
    )


def test_sensor_readings_carry_units_instants_and_devices(corpus: Path) -> None:
    document = parse_epcis_document((corpus / "epcis" / "SensorDataExample5.jsonld").read_bytes())
    readings = sensor_readings(document.events)
    assert readings.celsius == [26.0, 26.1, 26.2, 26.3, 26.4, 26.5]
    assert set(readings.logger_id) == {"111"}  # GIAI urn:epc:id:giai:4000001.111
    first = datetime(2019, 4, 2, 13, 5, tzinfo=UTC)  # 14:05+01:00
    assert readings.observed_at[0] == int(first.timestamp() * 1_000_000)


class Everyone:
    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        return [CoiStatus.KNOWN] * len(cois)

    def tokenize_many(self, requests: Sequence[object], *, actor: Actor) -> list[object]:
        raise AssertionError("never")


def test_staging_the_corpus_balances_every_ledger(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmohub.pipelines.context import RunContext
    from cmohub.pipelines.ledger import RunLedger
    from cmohub.pipelines.logistics import (
        FEED_CUSTODY,
        FEED_SENSOR,
        FeedBatch,
        Retractions,
        SeenKeys,
        _EpcisStaging,
        stage_epcis_payload,
    )
    from cmohub.pipelines.stage import FeedStager
    from cmohub.settings import load_settings

    settings = load_settings(home=tmp_path / "home")
    context = RunContext.for_interval(
        "logistics_sync", datetime(2026, 3, 1, tzinfo=UTC), run_id="corpus", settings=settings
    )
    ledger = RunLedger("corpus")
    staging = _EpcisStaging(
        custody=FeedBatch(FeedStager(context, FEED_CUSTODY, port=Everyone(), ledger=ledger)),
        sensor=FeedBatch(FeedStager(context, FEED_SENSOR, port=Everyone(), ledger=ledger)),
        seen=SeenKeys(context.lake, FEED_CUSTODY),
        retractions=Retractions(context.lake),
        run_id=context.path_run_id,
    )
    for path in sorted((corpus / "epcis").iterdir()):
        data = path.read_bytes()
        stage_epcis_payload(data, hashlib.sha256(data).hexdigest(), staging)
    staging.custody.stage()
    staging.sensor.stage()
    ledger.check()  # received == staged + quarantined + suppressed, per feed
    custody, sensor = ledger.counts[FEED_CUSTODY], ledger.counts[FEED_SENSOR]
    # Custody: the schema file (refused), 6 events about no COI of this hub; suppressed: an
    # error declaration and Example_9.6.1's two events, already received in the query document.
    assert (custody.received, custody.valid, custody.quarantined, custody.duplicates) == (
        10,
        0,
        7,
        3,
    )
    # Sensor: the simple-context copy of Example 5 and the declarations' reports are
    # suppressed; Examples 1 and 5 report device 111 at the same instants, twice with different
    # values (a key conflict: both quarantined) and once with the same (a duplicate).
    assert (sensor.received, sensor.valid, sensor.quarantined, sensor.duplicates) == (
        22,
        4,
        8,
        10,
    )
    assert ledger.quarantine_codes == {
        "PARSE_EPCIS_NOT_A_DOCUMENT": 1,
        "EPCIS_NO_COI": 6,
        "EPCIS_SENSOR_DEVICE_MISSING": 2,
        "EPCIS_SENSOR_ERROR_CONDITION": 1,
        "EPCIS_SENSOR_SUMMARY_ONLY": 1,
        "CONTRACT_KEY_CONFLICT": 4,
    }
    # Error declarations are remembered, so a retracted event staged earlier is dropped on load.
    assert len(staging.retractions.keys) == 4


def test_fast_hashing_gives_exactly_the_hash_librarys_own_results(
    corpus: Path, sandbox_program: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter expands one sensor report per vocabulary instead of every reading; the
    library's public path (expanding the whole document) must agree on every event."""
    import json

    from epcis_event_hash_generator import hash_generator, json_to_py
    from pyld import jsonld

    from cmohub.formats.epcis import STANDARD_CONTEXT, _offline_loader, gs1_event_hashes

    monkeypatch.setattr(jsonld, "_default_document_loader", _offline_loader)
    paths = [
        p
        for p in sorted((corpus / "epcis").glob("*.jsonld"))
        if "transformation_event_all" not in p.name
    ]
    paths += sorted((sandbox_program / "epcis").glob("*.jsonld"))[:3]
    for path in paths:
        document = json.loads(path.read_bytes())
        body = document["epcisBody"]
        events = body.get("eventList") or body["queryResults"]["resultsBody"]["eventList"]
        context = document.get("@context")
        items = context if isinstance(context, list) else [context]
        hashing = {
            "@context": [STANDARD_CONTEXT, *[c for c in items if isinstance(c, dict)]],
            "type": "EPCISDocument",
            "epcisBody": {"eventList": events},
        }
        json_to_py._namespaces.clear()
        expected = hash_generator.epcis_hashes_from_events(
            json_to_py.event_list_from_epcis_document_json(hashing)
        )
        assert gs1_event_hashes(document, events) == expected, path.name
