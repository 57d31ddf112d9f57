"""The custody ledger: possession passed on record, silence within the lane's window, delivered
to the destination; receipt at the wrong site, steps out of order, duplicates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from cmohub.coldchain import Directory, SiteIds, build_custody_ledger

T0 = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)
SITES = {
    fin: SiteIds(fin, f"urn:epc:id:sgln:0614141.{n}.0", f"urn:epc:id:pgln:0614141.{n}")
    for fin, n in (("A9991", 99991), ("A9995", 99995), ("A9996", 99996), ("A9997", 99997))
}
COURIER = "urn:epc:id:pgln:0614141.88801"
DIRECTORY = Directory(SITES, couriers={COURIER: "POLAR"})
UTC_US = pa.timestamp("us", tz="UTC")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def event(
    n: int,
    minutes: float,
    step: str,
    site: str,
    *,
    source: str | None = None,
    target: str | None = None,
    shipment: str = "S1",
) -> dict[str, object]:
    return {
        "event_id": f"E{n}",
        "shipment_id": shipment,
        "event_time": at(minutes),
        "event_time_zone_offset": "+00:00",
        "biz_step": step,
        "disposition": None,
        "biz_location": SITES[site].sgln,
        "read_point": SITES[site].sgln,
        "source_party": source,
        "destination_party": target,
    }


def party(fin: str) -> str:
    return str(SITES[fin].pgln)


def clean_events() -> list[dict[str, object]]:
    """origin A9991 -> courier -> hub A9995 -> courier -> destination A9996."""
    return [
        event(1, -10, "shipping", "A9991", source=party("A9991"), target=COURIER),
        event(2, 0, "departing", "A9991"),
        event(3, 180, "arriving", "A9995"),
        event(4, 190, "receiving", "A9995", source=COURIER, target=party("A9995")),
        event(5, 290, "shipping", "A9995", source=party("A9995"), target=COURIER),
        event(6, 300, "departing", "A9995"),
        event(7, 600, "arriving", "A9996"),
        event(8, 610, "receiving", "A9996", source=COURIER, target=party("A9996")),
    ]


def ledger(
    events: list[dict[str, object]],
    *,
    arrived: bool = True,
    window: int = 720,
    directory: Directory = DIRECTORY,
):
    legs = pa.table(
        {
            "shipment_id": ["S1", "S1"],
            "leg_no": pa.array([1, 2], pa.int64()),
            "origin": ["A9991", "A9995"],
            "destination": ["A9995", "A9996"],
            "departed_at": pa.array([at(0), at(300)], UTC_US),
            "arrived_at": pa.array([at(180), at(600) if arrived else None], UTC_US),
            "max_silence_minutes": pa.array([window, window], pa.int64()),
        }
    )
    shipments = pa.table(
        {
            "shipment_id": ["S1"],
            "coi": ["CHA999926AAAAAAB"],
            "origin": ["A9991"],
            "destination": ["A9996"],
        }
    )
    return build_custody_ledger(pa.Table.from_pylist(events), shipments, legs, directory)


def codes(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [f["code"] for f in result.findings.to_pylist()]


def test_a_clean_chain_has_no_finding_and_names_every_handoff() -> None:
    result = ledger(clean_events())
    assert codes(result) == [] and result.exceptions() == []
    steps = result.steps.to_pylist()
    assert [s["leg_no"] for s in steps] == [1, 1, 1, 1, 2, 2, 2, 2]
    handoffs = [(s["from_party"], s["to_party"]) for s in steps if s["handoff"]]
    assert handoffs == [
        ("A9991", "POLAR"),
        ("POLAR", "A9995"),
        ("A9995", "POLAR"),
        ("POLAR", "A9996"),
    ]


def test_possession_changing_hands_off_the_record_is_a_custody_gap() -> None:
    events = [e for e in clean_events() if e["event_id"] not in ("E3", "E4")]  # the sandbox fault
    result = ledger(events)
    assert codes(result) == ["CUSTODY_POSSESSION_UNRECORDED"]
    (finding,) = result.findings.to_pylist()
    assert (finding["event_id"], finding["rule"], finding["leg_no"]) == ("E5", "CUSTODY_GAP", 2)
    assert "A9995 hands over" in finding["detail"] and "POLAR" in finding["detail"]
    assert result.exceptions() == ["S1"]


def test_silence_longer_than_the_lane_allows_is_a_custody_gap() -> None:
    assert codes(ledger(clean_events(), window=240)) == ["CUSTODY_SILENCE"]
    assert codes(ledger(clean_events(), window=300)) == []


def test_material_not_received_at_the_destination_is_a_gap_once_the_last_leg_arrived() -> None:
    events = clean_events()[:-1]  # no receiving at A9996: the courier still holds it
    assert codes(ledger(events)) == ["CUSTODY_NOT_DELIVERED"]
    assert codes(ledger(events, arrived=False)) == []  # still in transit: not judged yet


def test_receipt_at_another_site_is_wrong_site_and_breaks_the_chain() -> None:
    events = clean_events()
    events[-1] = event(8, 610, "receiving", "A9997", source=COURIER, target=party("A9997"))
    result = ledger(events)
    assert sorted(codes(result)) == ["CUSTODY_NOT_DELIVERED", "CUSTODY_WRONG_SITE"]
    assert result.exceptions("CUSTODY_WRONG_SITE") == ["S1"]


def test_duplicates_and_out_of_order_steps_are_recorded_without_an_exception() -> None:
    events = clean_events()
    events.append(dict(events[3]))  # the hub's receiving delivered twice
    events[2] = event(3, 195, "arriving", "A9995")  # timed after the receiving it precedes
    result = ledger(events)
    assert sorted(codes(result)) == ["CUSTODY_DUPLICATE", "CUSTODY_OUT_OF_ORDER"]
    assert result.exceptions() == []


def test_without_party_identifiers_possession_is_not_guessed() -> None:
    blind = Directory({fin: SiteIds(fin, s.sgln, None) for fin, s in SITES.items()})
    events = [e for e in clean_events() if e["event_id"] not in ("E3", "E4")]
    result = ledger(events, directory=blind)
    assert codes(result) == ["CUSTODY_SITE_UNKNOWN"] and result.exceptions() == []


def test_missing_columns_are_named() -> None:
    from cmohub.errors import InputError

    with pytest.raises(InputError) as raised:
        build_custody_ledger(pa.table({"event_id": ["E1"]}), pa.table({}), pa.table({}), DIRECTORY)
    assert raised.value.code == "COLDCHAIN_COLUMNS_MISSING"
