"""The custody ledger: per shipment, who held the material when, and where it went wrong (pure).

The reading of the rule (``docs/sandbox.md``, CUSTODY_GAP): per shipment, over its custody
events in time order, starting with the origin as possessor —

* a ``sourceList`` possessing party that is not the current possessor (possession changed
  hands without a recorded handoff): finding ``CUSTODY_POSSESSION_UNRECORDED``;
* a silence longer than the leg's ``max_silence_minutes`` (the courier's
  ``custody_window_min``) between consecutive events: ``CUSTODY_SILENCE``;
* a last possessor other than the destination, once the last leg has arrived:
  ``CUSTODY_NOT_DELIVERED``.

Any of these makes one CUSTODY_GAP exception for the shipment. Also found:

* ``CUSTODY_WRONG_SITE`` (rule CUSTODY_WRONG_SITE): a ``receiving`` at a site other than the
  destination of the leg it ends (the leg departed last before it);
* ``CUSTODY_OUT_OF_ORDER`` (no exception): at one site, the event times contradict the order
  of the steps (``receiving`` before ``arriving``, ``departing`` before ``shipping``);
* ``CUSTODY_DUPLICATE`` (no exception): an event ID seen more than once; the copies are
  ignored;
* ``CUSTODY_SITE_UNKNOWN`` (no exception): the directory has no party identifier for the
  shipment's origin or destination, so possession cannot be judged (the other checks run).

Sites are matched by their GS1 identifiers (:class:`SiteIds`: SGLN of the location, PGLN of
the party); parties that are no site (couriers) are named by ``couriers`` when given.
Inputs are Arrow tables in the staged canonical form: custody events (``event_id``,
``shipment_id``, ``event_time``, ``event_time_zone_offset``, ``biz_step``, ``biz_location``
or ``read_point``, ``source_party``, ``destination_party``), shipments (``shipment_id``,
``coi``, ``origin``, ``destination``) and legs (``shipment_id``, ``leg_no``, ``origin``,
``destination``, ``departed_at``, ``arrived_at``, ``max_silence_minutes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from cmohub.coldchain.readings import require_columns

POSSESSION_UNRECORDED = "CUSTODY_POSSESSION_UNRECORDED"
SILENCE = "CUSTODY_SILENCE"
NOT_DELIVERED = "CUSTODY_NOT_DELIVERED"
WRONG_SITE = "CUSTODY_WRONG_SITE"
OUT_OF_ORDER = "CUSTODY_OUT_OF_ORDER"
DUPLICATE = "CUSTODY_DUPLICATE"
SITE_UNKNOWN = "CUSTODY_SITE_UNKNOWN"

#: Finding code -> the reconciliation rule it raises (None: recorded, no exception).
RULE_OF: dict[str, str | None] = {
    POSSESSION_UNRECORDED: "CUSTODY_GAP",
    SILENCE: "CUSTODY_GAP",
    NOT_DELIVERED: "CUSTODY_GAP",
    WRONG_SITE: "CUSTODY_WRONG_SITE",
    OUT_OF_ORDER: None,
    DUPLICATE: None,
    SITE_UNKNOWN: None,
}

#: Order of the custody steps at one site within a handoff.
STEP_RANK = {"shipping": 0, "departing": 1, "arriving": 2, "receiving": 3}
#: Steps that belong together: handing over (shipping, departing), taking over (the rest).
_HANDING_OVER = frozenset({"shipping", "departing"})

EVENT_COLUMNS = ("event_id", "shipment_id", "event_time", "biz_step")
SHIPMENT_COLUMNS = ("shipment_id", "coi", "origin", "destination")
LEG_COLUMNS = ("shipment_id", "leg_no", "origin", "destination", "departed_at")

STEP_SCHEMA = pa.schema(
    [
        pa.field("shipment_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("leg_no", pa.int64()),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("event_time_zone_offset", pa.string()),
        pa.field("biz_step", pa.string(), nullable=False),
        pa.field("disposition", pa.string()),
        pa.field("site", pa.string()),
        pa.field("from_party", pa.string()),
        pa.field("to_party", pa.string()),
        pa.field("possessor", pa.string()),
        pa.field("handoff", pa.bool_(), nullable=False),
        pa.field("minutes_since_previous", pa.float64()),
    ]
)

FINDING_SCHEMA = pa.schema(
    [
        pa.field("shipment_id", pa.string(), nullable=False),
        pa.field("coi", pa.string()),
        pa.field("leg_no", pa.int64()),
        pa.field("code", pa.string(), nullable=False),
        pa.field("rule", pa.string()),
        pa.field("event_id", pa.string()),
        pa.field("at", pa.timestamp("us", tz="UTC")),
        pa.field("detail", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class SiteIds:
    """A facility as EPCIS names it: its FIN, location (SGLN) and party (PGLN)."""

    fin: str
    sgln: str | None = None
    pgln: str | None = None
    name: str | None = None
    time_zone: str | None = None


@dataclass(frozen=True)
class Directory:
    """Who is who: sites by FIN, and reverse lookups from GS1 identifiers."""

    sites: Mapping[str, SiteIds]
    couriers: Mapping[str, str] = field(default_factory=dict)  # PGLN -> courier code

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_pgln", {s.pgln: s.fin for s in self.sites.values() if s.pgln})
        object.__setattr__(self, "_by_sgln", {s.sgln: s.fin for s in self.sites.values() if s.sgln})

    def party(self, fin: str) -> str | None:
        site = self.sites.get(fin)
        return site.pgln if site else None

    def party_name(self, uri: str | None) -> str | None:
        """The FIN or courier code of a party URI (the URI itself when unknown)."""
        if uri is None:
            return None
        by_pgln: dict[str, str] = getattr(self, "_by_pgln")  # noqa: B009 - set in __post_init__
        return by_pgln.get(uri) or self.couriers.get(uri) or uri

    def site_of_location(self, uri: str | None) -> str | None:
        if uri is None:
            return None
        by_sgln: dict[str, str] = getattr(self, "_by_sgln")  # noqa: B009 - set in __post_init__
        return by_sgln.get(uri)


@dataclass(frozen=True)
class CustodyLedger:
    """Ordered custody steps per shipment, and what is wrong with them."""

    steps: pa.Table
    findings: pa.Table

    def exceptions(self, rule: str = "CUSTODY_GAP") -> list[str]:
        """Shipment IDs with at least one finding that raises ``rule`` (one per shipment)."""
        rows = self.findings.select(["shipment_id", "rule"]).to_pylist()
        return sorted({str(r["shipment_id"]) for r in rows if r["rule"] == rule})

    def for_shipment(self, shipment_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        steps = [r for r in self.steps.to_pylist() if r["shipment_id"] == shipment_id]
        findings = [r for r in self.findings.to_pylist() if r["shipment_id"] == shipment_id]
        return steps, findings


@dataclass(frozen=True)
class _Leg:
    leg_no: int
    origin: str
    destination: str
    departed_at: datetime
    arrived_at: datetime | None
    window: timedelta | None


def _rows(table: pa.Table, names: Sequence[str]) -> list[dict[str, Any]]:
    present = [n for n in names if n in table.column_names]
    rows: list[dict[str, Any]] = table.select(present).to_pylist()
    for row in rows:
        for name in names:
            row.setdefault(name, None)
    return rows


def _leg_at(legs: Sequence[_Leg], when: datetime) -> _Leg | None:
    """The leg departed last at or before ``when`` (the first leg before any departure)."""
    current = legs[0] if legs else None
    for leg in legs:
        if leg.departed_at <= when:
            current = leg
    return current


def _leg_of_step(
    legs: Sequence[_Leg], when: datetime, step: str | None, site: str | None
) -> _Leg | None:
    """The leg a custody step belongs to: handing over at a site opens the leg that departs
    from it, taking over closes the leg that goes to it (nearest in time); otherwise, or when
    the site matches no leg, the leg in transit at that time."""
    if site is not None and step in STEP_RANK:
        giving = step in _HANDING_OVER
        candidates = [leg for leg in legs if (leg.origin if giving else leg.destination) == site]
        if candidates:

            def distance(leg: _Leg) -> float:
                moment = leg.departed_at if giving else (leg.arrived_at or leg.departed_at)
                return abs((moment - when).total_seconds())

            return min(candidates, key=distance)
    return _leg_at(legs, when)


def build_custody_ledger(
    events: pa.Table,
    shipments: pa.Table,
    legs: pa.Table,
    directory: Directory,
    *,
    default_window_minutes: int | None = None,
) -> CustodyLedger:
    """The custody steps and findings of every shipment (see the module docstring)."""
    require_columns(events, EVENT_COLUMNS, "custody events")
    require_columns(shipments, SHIPMENT_COLUMNS, "shipments")
    require_columns(legs, LEG_COLUMNS, "legs")
    leg_rows = _rows(
        legs,
        (
            "shipment_id",
            "leg_no",
            "origin",
            "destination",
            "departed_at",
            "arrived_at",
            "max_silence_minutes",
        ),
    )
    legs_of: dict[str, list[_Leg]] = {}
    for row in leg_rows:
        minutes = row["max_silence_minutes"] or default_window_minutes
        legs_of.setdefault(row["shipment_id"], []).append(
            _Leg(
                int(row["leg_no"]),
                row["origin"],
                row["destination"],
                row["departed_at"],
                row["arrived_at"],
                timedelta(minutes=int(minutes)) if minutes else None,
            )
        )
    for leg_list in legs_of.values():
        leg_list.sort(key=lambda leg: (leg.departed_at, leg.leg_no))

    event_rows = _rows(
        events,
        (
            "event_id",
            "shipment_id",
            "event_time",
            "event_time_zone_offset",
            "biz_step",
            "disposition",
            "biz_location",
            "read_point",
            "source_party",
            "destination_party",
        ),
    )
    by_shipment: dict[str, list[dict[str, Any]]] = {}
    for row in event_rows:
        if row["shipment_id"] is not None:
            by_shipment.setdefault(row["shipment_id"], []).append(row)

    steps: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    for shipment in sorted(_rows(shipments, SHIPMENT_COLUMNS), key=lambda r: r["shipment_id"]):
        sid = shipment["shipment_id"]
        s_steps, s_findings = _ledger_of(
            shipment, by_shipment.get(sid, []), legs_of.get(sid, []), directory
        )
        steps.extend(s_steps)
        findings.extend(s_findings)
    return CustodyLedger(
        steps=pa.Table.from_pylist(steps, schema=STEP_SCHEMA),
        findings=pa.Table.from_pylist(findings, schema=FINDING_SCHEMA),
    )


def _ledger_of(
    shipment: Mapping[str, Any],
    events: list[dict[str, Any]],
    legs: list[_Leg],
    directory: Directory,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sid = shipment["shipment_id"]
    findings: list[dict[str, Any]] = []

    def find(code: str, leg: _Leg | None, event: Mapping[str, Any] | None, detail: str) -> None:
        findings.append(
            {
                "shipment_id": sid,
                "coi": shipment["coi"],
                "leg_no": leg.leg_no if leg else None,
                "code": code,
                "rule": RULE_OF[code],
                "event_id": event["event_id"] if event else None,
                "at": event["event_time"] if event else None,
                "detail": detail,
            }
        )

    seen: set[str] = set()
    unique: list[dict[str, Any]] = []
    for event in events:
        if event["event_id"] in seen:
            find(DUPLICATE, None, event, "the same custody event was recorded more than once")
            continue
        seen.add(event["event_id"])
        unique.append(event)
    unique.sort(key=lambda e: (e["event_time"], STEP_RANK.get(e["biz_step"], 9), e["event_id"]))

    origin_party = directory.party(shipment["origin"])
    destination_party = directory.party(shipment["destination"])
    judge_possession = origin_party is not None and destination_party is not None
    if not judge_possession:
        find(
            SITE_UNKNOWN,
            None,
            None,
            f"no GS1 party identifier for {shipment['origin']} or {shipment['destination']} "
            "in the site directory: possession not judged",
        )
    possessor = origin_party
    steps: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    for seq, event in enumerate(unique, start=1):
        when: datetime = event["event_time"]
        site = directory.site_of_location(event["biz_location"] or event["read_point"])
        leg = _leg_of_step(legs, when, event["biz_step"], site)
        source = event["source_party"]
        target = event["destination_party"]
        gap = None
        if previous is not None:
            gap = when - previous["event_time"]
            silent_leg = _leg_at(legs, previous["event_time"])
            window = silent_leg.window if silent_leg else None
            if window is not None and gap > window:
                find(
                    SILENCE,
                    silent_leg,
                    event,
                    f"no custody event for {gap.total_seconds() / 60:.0f} minutes "
                    f"(the lane allows {window.total_seconds() / 60:.0f})",
                )
            rank, prev_rank = STEP_RANK.get(event["biz_step"]), STEP_RANK.get(previous["biz_step"])
            prev_site = directory.site_of_location(
                previous["biz_location"] or previous["read_point"]
            )
            if (
                rank is not None
                and prev_rank is not None
                and site is not None
                and site == prev_site
                and (event["biz_step"] in _HANDING_OVER) == (previous["biz_step"] in _HANDING_OVER)
                and rank < prev_rank
            ):
                find(
                    OUT_OF_ORDER,
                    leg,
                    event,
                    f"{event['biz_step']} at {site} is timed before the {previous['biz_step']} "
                    "it should follow",
                )
        if judge_possession and source is not None and source != possessor:
            find(
                POSSESSION_UNRECORDED,
                leg,
                event,
                f"{directory.party_name(source)} hands over, but the last recorded possessor "
                f"is {directory.party_name(possessor) or 'unknown'}",
            )
        handoff = target is not None and target != possessor
        if target is not None:
            possessor = target
        in_transit = _leg_at(legs, when)
        if event["biz_step"] == "receiving" and in_transit is not None and site is not None:
            expected = in_transit.destination
            if site != expected:
                find(
                    WRONG_SITE,
                    in_transit,
                    event,
                    f"received at {site}, but leg {in_transit.leg_no} goes to {expected}",
                )
        steps.append(
            {
                "shipment_id": sid,
                "seq": seq,
                "leg_no": leg.leg_no if leg else None,
                "event_id": event["event_id"],
                "event_time": when,
                "event_time_zone_offset": event["event_time_zone_offset"],
                "biz_step": event["biz_step"],
                "disposition": event["disposition"],
                "site": site,
                "from_party": directory.party_name(source),
                "to_party": directory.party_name(target),
                "possessor": directory.party_name(possessor),
                "handoff": handoff,
                "minutes_since_previous": gap.total_seconds() / 60 if gap is not None else None,
            }
        )
        previous = event

    delivered = bool(legs) and legs[-1].arrived_at is not None
    if judge_possession and delivered and possessor != destination_party:
        last = unique[-1] if unique else None
        find(
            NOT_DELIVERED,
            legs[-1],
            last,
            f"the last recorded possessor is {directory.party_name(possessor) or 'unknown'}, "
            f"not the destination {shipment['destination']}",
        )
    return steps, findings
