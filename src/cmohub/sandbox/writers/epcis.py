"""EPCIS 2.0 JSON-LD: custody ObjectEvents and logger temperature reports.

One EPCISDocument per UTC day of ``eventTime``: ``epcis/<YYYY-MM-DD>.jsonld``. The material's
COI is the EPC ``urn:cmohub:coi:<COI>`` and the extension field ``cmohub:coi``; the shipment
is the bizTransaction ``urn:cmohub:shipment:<id>`` (type ``bol``) and ``cmohub:shipmentId``.
Temperature readings of legs whose courier exports to EPCIS come as ``sensor_reporting``
events, one per logger and clock hour of the leg (at most 60 readings each).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from cmohub.domain import CustodyEvent
from cmohub.sandbox.program import Journey, LegPlan, LoggerTrace, ShipmentPlan, iter_readings
from cmohub.sandbox.sink import TreeWriter
from cmohub.sandbox.timeutil import iso_at_offset, offset_minutes, offset_text, parse_offset
from cmohub.sandbox.world import GS1_PREFIX, SITE_BY_FIN, SPONSOR_FIN, pgln
from cmohub.sandbox.writers.common import Tally

CONTEXT = [
    "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld",
    {"cmohub": "https://ns.cmohub.invalid/epcis/"},
]
COI_EPC = "urn:cmohub:coi:{coi}"
SHIPMENT_URI = "urn:cmohub:shipment:{shipment_id}"
_EVENT_NS = uuid.UUID("6f1b7c52-32a4-4c1e-9a55-0c6d7b0e5a31")


def document_path(day: str) -> str:
    return f"epcis/{day}.jsonld"


def document_header(day: str) -> str:
    head = {
        "@context": CONTEXT,
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": f"{day}T23:59:59Z",
        "epcisBody": {"eventList": []},
    }
    text = json.dumps(head, separators=(",", ":"))
    return text[: -len("]}}")] + "\n"


DOCUMENT_FOOTER = "\n]}}\n"


def giai(reference: str) -> str:
    return f"urn:epc:id:giai:{GS1_PREFIX}.{reference}"


def leg_of(plan: ShipmentPlan, event: CustodyEvent) -> int:
    """Which leg a custody event of ``plan`` belongs to (handing-over events: the leg that
    starts there; taking-over events: the leg that ends there)."""
    giving = event.biz_step in ("shipping", "departing")
    for lp in plan.legs:
        site = lp.leg.origin if giving else lp.leg.destination
        if SITE_BY_FIN[site].sgln == event.read_point:
            return lp.leg.leg_no
    raise ValueError("custody event at a site the shipment does not touch")


def _parties(kind: str, possessing: str | None) -> list[dict[str, str]]:
    if possessing is None:
        return []
    return [
        {"type": "possessing_party", kind: possessing},
        {"type": "owning_party", kind: pgln(SPONSOR_FIN)},
    ]


def render_custody(
    event: CustodyEvent,
    *,
    material: str,
    leg_no: int | None = None,
    ilmd: dict[str, str] | None = None,
) -> dict[str, Any]:
    offset = parse_offset(event.event_time_zone_offset)
    out: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventTime": iso_at_offset(event.event_time, offset),
        "eventTimeZoneOffset": event.event_time_zone_offset,
        "eventID": event.event_id,
        "epcList": [COI_EPC.format(coi=event.coi)],
        "action": event.action.value,
        "bizStep": event.biz_step,
    }
    if event.disposition:
        out["disposition"] = event.disposition
    if event.read_point:
        out["readPoint"] = {"id": event.read_point}
    if event.biz_location:
        out["bizLocation"] = {"id": event.biz_location}
    if event.shipment_id:
        uri = SHIPMENT_URI.format(shipment_id=event.shipment_id)
        out["bizTransactionList"] = [{"type": "bol", "bizTransaction": uri}]
    sources = _parties("source", event.source_party)
    if sources:
        out["sourceList"] = sources
    destinations = _parties("destination", event.destination_party)
    if destinations:
        out["destinationList"] = destinations
    if ilmd:
        out["ilmd"] = ilmd
    out["cmohub:coi"] = event.coi
    out["cmohub:material"] = material
    if event.shipment_id:
        out["cmohub:shipmentId"] = event.shipment_id
    if leg_no is not None:
        out["cmohub:legNo"] = leg_no
    return out


def minute_stamps(trace: LoggerTrace) -> list[str]:
    """Local ISO stamps (origin offset at departure) of minutes 0..trace.minutes."""
    suffix = offset_text(trace.utc_offset)
    start = (trace.first_reading.astimezone(UTC) + timedelta(minutes=trace.utc_offset)).replace(
        tzinfo=None
    )
    stamps: list[str] = []
    total = trace.minutes + 1
    moment = start
    while len(stamps) < total:
        prefix = f"{moment:%Y-%m-%dT%H:}"
        first = moment.minute
        n = min(60 - first, total - len(stamps))
        stamps.extend(f"{prefix}{m:02d}:00{suffix}" for m in range(first, first + n))
        moment += timedelta(minutes=n)
    return stamps


def render_sensor_events(
    trace: LoggerTrace, shipper_id: str, material: str
) -> Iterable[tuple[datetime, str, int]]:
    """(UTC time of the last reading, event JSON, readings) per clock hour of the leg."""
    stamps = minute_stamps(trace)
    head = (
        '{"type":"ObjectEvent","eventTime":"%s","eventTimeZoneOffset":"'
        + offset_text(trace.utc_offset)
        + '","eventID":"%s","epcList":["'
        + COI_EPC.format(coi=trace.coi)
        + '"],"action":"OBSERVE","bizStep":"sensor_reporting","readPoint":{"id":"'
        + giai(shipper_id)
        + '"},"bizTransactionList":[{"type":"bol","bizTransaction":"'
        + SHIPMENT_URI.format(shipment_id=trace.shipment_id)
        + '"}],"sensorElementList":[{"sensorMetadata":{"deviceID":"'
        + giai(trace.logger_id)
        + '","startTime":"%s","endTime":"%s"},"sensorReport":['
    )
    tail = (
        ']}],"cmohub:coi":"'
        + trace.coi
        + f'","cmohub:material":"{material}","cmohub:shipmentId":"'
        + trace.shipment_id
        + f'","cmohub:legNo":{trace.leg_no},"cmohub:loggerId":"{trace.logger_id}"}}'
    )
    block: list[str] = []
    block_key = -1
    first_k = last_k = 0

    def flush() -> tuple[datetime, str, int]:
        event_id = f"urn:uuid:{uuid.uuid5(_EVENT_NS, f'{trace.logger_id}:{block_key}')}"
        text = (
            head % (stamps[last_k], event_id, stamps[first_k], stamps[last_k])
            + ",".join(block)
            + tail
        )
        return trace.first_reading + timedelta(minutes=last_k), text, len(block)

    # Hours are counted on the local clock so that every event covers one clock hour.
    shift = int(stamps[0][14:16])
    for k, celsius in iter_readings(trace):
        key = (k + shift) // 60
        if key != block_key and block:
            yield flush()
            block = []
        if not block:
            block_key, first_k = key, k
        last_k = k
        block.append(
            f'{{"type":"gs1:Temperature","time":"{stamps[k]}","value":{celsius},"uom":"CEL"}}'
        )
    if block:
        yield flush()


class EpcisWriter:
    def __init__(self, tree: TreeWriter, tally: Tally) -> None:
        self.tree = tree
        self.tally = tally

    def _emit(self, when: datetime, text: str) -> str:
        day = f"{when.astimezone(UTC):%Y-%m-%d}"
        path = document_path(day)
        self.tree.append(
            path, text, header=document_header(day), footer=DOCUMENT_FOOTER, separator=",\n"
        )
        return path

    def write(self, j: Journey) -> str | None:
        """Write the journey's events; return the file of its stray (corrupted COI) event."""
        sm, fp = j.commissioning
        self._custody(sm, "starting_material", ilmd={"cmohub:din": j.collection.din})
        self._shipment(j.starting, "starting_material")
        self._custody(fp, "finished_product", ilmd={"cmohub:batchId": j.batch.batch_id})
        self._shipment(j.finished, "finished_product")
        stray_path = None
        if j.stray_custody is not None:
            s = j.stray_custody
            offset = offset_minutes(s.event_time, SITE_BY_FIN[s.site].time_zone)
            site = SITE_BY_FIN[s.site]
            event = {
                "type": "ObjectEvent",
                "eventTime": iso_at_offset(s.event_time, offset),
                "eventTimeZoneOffset": offset_text(offset),
                "eventID": s.event_id,
                "epcList": [COI_EPC.format(coi=s.coi_text)],
                "action": "OBSERVE",
                "bizStep": "inspecting",
                "disposition": "in_progress",
                "readPoint": {"id": site.sgln},
                "bizLocation": {"id": site.sgln},
                "bizTransactionList": [
                    {
                        "type": "bol",
                        "bizTransaction": SHIPMENT_URI.format(shipment_id=s.shipment_id),
                    }
                ],
                "cmohub:coi": s.coi_text,
                "cmohub:material": "starting_material",
                "cmohub:shipmentId": s.shipment_id,
            }
            stray_path = self._emit(s.event_time, json.dumps(event, separators=(",", ":")))
            self.tally.sources["epcis.custody_events"] += 1
        return stray_path

    def _custody(
        self,
        event: CustodyEvent,
        material: str,
        *,
        leg_no: int | None = None,
        ilmd: dict[str, str] | None = None,
    ) -> None:
        rendered = render_custody(event, material=material, leg_no=leg_no, ilmd=ilmd)
        self._emit(event.event_time, json.dumps(rendered, separators=(",", ":")))
        self.tally.sources["epcis.custody_events"] += 1

    def _shipment(self, plan: ShipmentPlan, material: str) -> None:
        for event in plan.custody:
            self._custody(event, material, leg_no=leg_of(plan, event))
        for lp in plan.legs:
            if lp.trace.export == "epcis":
                self._sensor(lp, material)

    def _sensor(self, lp: LegPlan, material: str) -> None:
        for when, text, readings in render_sensor_events(lp.trace, lp.leg.shipper_id, material):
            self._emit(when, text)
            self.tally.sources["epcis.sensor_events"] += 1
            self.tally.sources["epcis.readings"] += readings
