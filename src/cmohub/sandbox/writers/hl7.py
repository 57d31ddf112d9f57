"""HL7 v2.5.1 messages of the HL7 site (A9992): OML^O21 orders and ADT^A08 updates.

One message per file, ``\\r`` between segments and after the last one, under
``clinical/hl7/A9992/<local date>/<control id>.hl7``. Where each identifier sits:
PID-3 the MRN (CX with assigning authority ``SBXA9992&<MRN system>&URI``), PID-5 name,
PID-7 birth date, PID-13 phone and e-mail; ORC-2 / OBR-2 the placer order number, ORC-4
(placer group number) the therapy event ID, OBR-4 the product code, TQ1-7 the planned
collection date.
"""

from __future__ import annotations

from datetime import datetime

from cmohub.sandbox.faults import Fault, PlantedFault
from cmohub.sandbox.program import Journey
from cmohub.sandbox.sink import TreeWriter
from cmohub.sandbox.timeutil import local_date, offset_minutes, offset_text, zone
from cmohub.sandbox.writers.common import Tally
from cmohub.sandbox.writers.fhir import PRODUCT_NAMES

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
SENDING_APP = "SBX-EHR"
RECEIVING_APP = "CMOHUB"


def escape(value: str) -> str:
    for raw, escaped in _ESCAPES:
        value = value.replace(raw, escaped)
    return value


def hl7_ts(when: datetime, zone_name: str) -> str:
    """HL7 DTM with offset in the site's zone: ``20260105103000+0000``."""
    minutes = offset_minutes(when, zone_name)
    local = when.astimezone(zone(zone_name))
    return f"{local:%Y%m%d%H%M%S}{offset_text(minutes, colon=False)}"


def _msh(j: Journey, when: datetime, message_type: str, control_id: str) -> str:
    return (
        f"MSH|^~\\&|{SENDING_APP}|{j.site.fin}|{RECEIVING_APP}|A9999|"
        f"{hl7_ts(when, j.site.time_zone)}||{message_type}|{control_id}|P|2.5.1|||AL|NE||"
        "UNICODE UTF-8"
    )


def _pid(j: Journey, phone: str) -> str:
    p = j.patient
    authority = f"SBX{j.site.fin}&{p.mrn_system}&URI"
    sex = "F" if p.sex == "female" else "M"
    address = f"{escape(p.address_line)}^^{escape(p.city)}^^{escape(p.postal_code)}^{p.country}"
    telecom = f"{escape(phone)}^PRN^PH~^NET^Internet^{escape(p.email)}"
    return (
        f"PID|1||{escape(p.mrn)}^^^{authority}^MR||{escape(p.family)}^{escape(p.given)}||"
        f"{p.birth_date:%Y%m%d}|{sex}|||{address}||{telecom}"
    )


def render_oml_o21(j: Journey, control_id: str) -> str:
    o = j.order
    assert o.planned_collection_on is not None
    ts = hl7_ts(o.ordered_at, j.site.time_zone)
    segments = [
        _msh(j, o.ordered_at, "OML^O21^OML_O21", control_id),
        _pid(j, j.patient.phone),
        "PV1|1|O",
        f"ORC|NW|{o.order_id}^{SENDING_APP}||{j.therapy_event}^SBX-ENROLL|||||{ts}",
        f"TQ1|1||||||{o.planned_collection_on:%Y%m%d}",
        f"OBR|1|{o.order_id}^{SENDING_APP}||{j.product}^{escape(PRODUCT_NAMES[j.product])}^L"
        f"|||{ts}",
    ]
    return "\r".join(segments) + "\r"


def render_adt_a08(j: Journey, control_id: str) -> str:
    assert j.adt_update_at is not None and j.patient.updated_phone is not None
    ts = hl7_ts(j.adt_update_at, j.site.time_zone)
    segments = [
        _msh(j, j.adt_update_at, "ADT^A08^ADT_A01", control_id),
        f"EVN|A08|{ts}",
        _pid(j, j.patient.updated_phone),
        "PV1|1|O",
    ]
    return "\r".join(segments) + "\r"


def malform(message: str, fault: Fault) -> str:
    """The planted broken copy of ``message``."""
    if fault is Fault.MALFORMED_HL7_TRUNCATED:
        # The connection dropped inside PID: no order segments, no final separator.
        pid = message.index("\rPID|") + 1
        return message[: pid + (message.index("\r", pid) - pid) // 2]
    if fault is Fault.MALFORMED_HL7_NUL_BYTES:
        orc = message.index("\rORC|") + 1
        return message[: orc + 4] + "\x00\x00\x00\x00" + message[orc + 4 :]
    if fault is Fault.MALFORMED_HL7_ENCODING:
        return message.replace("MSH|^~\\&|", "MSH|^~}|", 1)
    raise ValueError(f"not an HL7 fault: {fault}")


class Hl7Writer:
    def __init__(self, tree: TreeWriter, tally: Tally) -> None:
        self.tree = tree
        self.tally = tally
        self._control = 0

    def _next_control_id(self) -> str:
        self._control += 1
        return f"SBX{self._control:010d}"

    def _path(self, j: Journey, when: datetime, control_id: str) -> str:
        day = local_date(when, j.site.time_zone)
        return f"clinical/hl7/{j.site.fin}/{day.isoformat()}/{control_id}.hl7"

    def write(self, j: Journey) -> None:
        if not j.order_via_hl7:
            return
        if j.fault is not None and j.fault.value.startswith("malformed_hl7"):
            control_id = self._next_control_id()
            broken = malform(render_oml_o21(j, control_id), j.fault)
            path = self._path(j, j.order.ordered_at, control_id)
            self.tree.write(path, broken)
            self.tally.sources["hl7.malformed"] += 1
            self.tally.planted.append(
                PlantedFault(
                    j.fault,
                    {"file": path, "control_id": control_id, "message_type": "OML^O21"},
                    _DETAILS[j.fault],
                )
            )
        control_id = self._next_control_id()
        self.tree.write(
            self._path(j, j.order.ordered_at, control_id), render_oml_o21(j, control_id)
        )
        self.tally.sources["hl7.OML_O21"] += 1
        if j.adt_update_at is not None:
            control_id = self._next_control_id()
            self.tree.write(
                self._path(j, j.adt_update_at, control_id), render_adt_a08(j, control_id)
            )
            self.tally.sources["hl7.ADT_A08"] += 1


_DETAILS = {
    Fault.MALFORMED_HL7_TRUNCATED: "OML^O21 cut off inside PID (no ORC/OBR, no final separator);"
    " the complete message follows in its own file",
    Fault.MALFORMED_HL7_NUL_BYTES: "OML^O21 with NUL bytes inside ORC; resent intact",
    Fault.MALFORMED_HL7_ENCODING: "OML^O21 whose MSH-2 encoding characters are ^~} ; resent intact",
}
