"""The courier API's shipment JSON, and the logger CSV exports of Cryoway's legs.

``courier/<COURIER>/shipments/<YYYY-MM-DD>.json``: the shipments delivered on that UTC day,
as ``{"carrier", "export_date", "shipments": [...]}``. Logger CSVs (``logger_data: "csv"``
legs only, whose readings are *not* in EPCIS): ``courier/<COURIER>/loggers/<YYYY-MM-DD>/
<logger>.csv`` with columns ``serial,shipment,local_time,utc_offset,temp_f`` (°F, the
origin's local time and offset at departure).
"""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from typing import Any

from cmohub.domain import ShipmentKind
from cmohub.sandbox.program import Journey, LoggerTrace, ShipmentPlan, iter_readings
from cmohub.sandbox.sink import TreeWriter
from cmohub.sandbox.timeutil import local_iso, offset_text
from cmohub.sandbox.world import SITE_BY_FIN
from cmohub.sandbox.writers.common import Tally, csv_row

LOGGER_CSV_HEADER = ("serial", "shipment", "local_time", "utc_offset", "temp_f")
LOGGER_INTERVAL_SECONDS = 60
SERVICE_LEVEL = {"2-8C": "COOL-2-8C", "cryogenic": "CRYO-LN2"}


def shipments_path(courier: str, day: str) -> str:
    return f"courier/{courier}/shipments/{day}.json"


def render_shipment(plan: ShipmentPlan) -> dict[str, Any]:
    s = plan.shipment
    origin_zone = SITE_BY_FIN[s.origin].time_zone
    legs = []
    for lp in plan.legs:
        leg = lp.leg
        assert leg.arrived_at is not None
        legs.append(
            {
                "seq": leg.leg_no,
                "from": leg.origin,
                "to": leg.destination,
                "dewar": leg.shipper_id,
                "logger": leg.logger_id,
                "logger_interval_s": LOGGER_INTERVAL_SECONDS,
                "logger_data": lp.trace.export,
                "picked_up": local_iso(leg.departed_at, lp.origin_zone),
                "delivered": local_iso(leg.arrived_at, lp.destination_zone),
                "custody_window_min": leg.max_silence_minutes,
            }
        )
    return {
        "tracking_no": s.shipment_id,
        "customer_ref": s.coi,
        "consignment": "APHERESIS" if s.kind is ShipmentKind.STARTING_MATERIAL else "DRUG_PRODUCT",
        "product": s.product_code,
        "service": SERVICE_LEVEL.get(plan.temperature_class.code, "CRYO-SPECIAL"),
        "status": "DELIVERED",
        "booked": local_iso(s.booked_at, origin_zone),
        "ship_from": s.origin,
        "ship_to": s.destination,
        "legs": legs,
    }


def render_logger_csv(trace: LoggerTrace) -> tuple[str, int]:
    """The logger's CSV export and its number of readings."""
    offset = offset_text(trace.utc_offset)
    start = (trace.first_reading.astimezone(UTC) + timedelta(minutes=trace.utc_offset)).replace(
        tzinfo=None
    )
    rows = [csv_row(LOGGER_CSV_HEADER, newline="\n")]
    for k, celsius in iter_readings(trace):
        local = start + timedelta(minutes=k)
        fahrenheit = round(celsius * 9 / 5 + 32, 1)
        rows.append(
            f"{trace.logger_id},{trace.shipment_id},{local:%Y-%m-%d %H:%M:%S},{offset},"
            f"{fahrenheit}\n"
        )
    return "".join(rows), len(rows) - 1


class CourierWriter:
    def __init__(self, tree: TreeWriter, tally: Tally) -> None:
        self.tree = tree
        self.tally = tally

    def write(self, j: Journey) -> None:
        for plan in j.shipments:
            self._shipment(plan)

    def _shipment(self, plan: ShipmentPlan) -> None:
        code = plan.courier.code
        day = f"{plan.delivered_at.astimezone(UTC):%Y-%m-%d}"
        header = json.dumps({"carrier": code, "export_date": day}, separators=(",", ":"))
        self.tree.append(
            shipments_path(code, day),
            json.dumps(render_shipment(plan), separators=(",", ":")),
            header=header[:-1] + ',"shipments":[\n',
            footer="\n]}\n",
            separator=",\n",
        )
        self.tally.sources[f"courier.{code}.shipments"] += 1
        for lp in plan.legs:
            if lp.trace.export != "csv":
                continue
            assert lp.leg.arrived_at is not None
            text, readings = render_logger_csv(lp.trace)
            arrived = f"{lp.leg.arrived_at.astimezone(UTC):%Y-%m-%d}"
            self.tree.write(f"courier/{code}/loggers/{arrived}/{lp.trace.logger_id}.csv", text)
            self.tally.sources["logger_csv.files"] += 1
            self.tally.sources["logger_csv.readings"] += readings
