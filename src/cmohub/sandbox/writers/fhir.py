"""FHIR R4 JSON of the sponsor's clinical platform: Patient, ServiceRequest, Specimen, Procedure.

Written as bulk-export NDJSON (``clinical/fhir/<Type>.ndjson``, one resource per line) and as
searchset Bundle pages (``clinical/fhir/pages/<Type>/page-NNNNN.json``) with ``self``/``next``
links under :data:`FHIR_BASE`, a placeholder the sandbox FHIR server rewrites to its own
address. Orders of the HL7 site are not FHIR ServiceRequests (they arrive as OML^O21).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from cmohub.sandbox.faults import Fault, PlantedFault
from cmohub.sandbox.program import Journey
from cmohub.sandbox.sink import TreeWriter
from cmohub.sandbox.timeutil import local_iso, utc_iso
from cmohub.sandbox.writers.common import Tally

FHIR_BASE = "http://fhir.sandbox.invalid/r4"
PAGE_SIZE = 100
RESOURCE_TYPES = ("Patient", "ServiceRequest", "Specimen", "Procedure")
ISBT128_DIN_SYSTEM = "urn:oid:2.16.840.1.113883.6.18"
THERAPY_EVENT_SYSTEM = "urn:cmohub:sandbox:therapy-event"
FIN_SYSTEM = "urn:cmohub:sandbox:fin"
PRODUCT_SYSTEM = "urn:cmohub:sandbox:product"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
PRODUCT_NAMES = {
    "SBX-CART-01": "Sandbox autologous anti-CD19 CAR-T (synthetic)",
    "SBX-TCR-02": "Sandbox autologous TCR-T (synthetic)",
}


def ndjson_path(resource_type: str) -> str:
    return f"clinical/fhir/{resource_type}.ndjson"


def _meta(when_utc: Any, lag_minutes: int) -> dict[str, str]:
    return {"versionId": "1", "lastUpdated": utc_iso(when_utc + timedelta(minutes=lag_minutes))}


def _therapy_event_ref(j: Journey) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "type": "ServiceRequest",
        "identifier": {"system": THERAPY_EVENT_SYSTEM, "value": j.therapy_event},
    }
    if not j.order_via_hl7:
        ref = {"reference": f"ServiceRequest/{j.fhir.service_request}", **ref}
    return ref


def render_patient(j: Journey) -> dict[str, Any]:
    p = j.patient
    return {
        "resourceType": "Patient",
        "id": j.fhir.patient,
        "meta": _meta(j.enrolled_at, j.record_lag_minutes[0]),
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                "system": p.mrn_system,
                "value": p.mrn,
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": p.family, "given": [p.given]}],
        "telecom": [
            {"system": "phone", "value": p.phone, "use": "home"},
            {"system": "email", "value": p.email},
        ],
        "gender": p.sex,
        "birthDate": p.birth_date.isoformat(),
        "address": [
            {
                "use": "home",
                "line": [p.address_line],
                "city": p.city,
                "postalCode": p.postal_code,
                "country": p.country,
            }
        ],
        "managingOrganization": {
            "identifier": {"system": FIN_SYSTEM, "value": j.site.fin},
            "display": j.site.name,
        },
    }


def render_service_request(j: Journey) -> dict[str, Any]:
    o = j.order
    assert o.planned_collection_on is not None
    return {
        "resourceType": "ServiceRequest",
        "id": j.fhir.service_request,
        "meta": _meta(o.ordered_at, j.record_lag_minutes[1]),
        "identifier": [
            {
                "type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
                "system": f"urn:cmohub:sandbox:placer:{j.site.fin}",
                "value": o.order_id,
            },
            {"system": THERAPY_EVENT_SYSTEM, "value": j.therapy_event},
        ],
        "status": "completed",
        "intent": "order",
        "code": {
            "coding": [
                {"system": PRODUCT_SYSTEM, "code": j.product, "display": PRODUCT_NAMES[j.product]}
            ]
        },
        "subject": {"reference": f"Patient/{j.fhir.patient}"},
        "occurrenceDateTime": o.planned_collection_on.isoformat(),
        "authoredOn": local_iso(o.ordered_at, j.site.time_zone),
        "requester": {"identifier": {"system": FIN_SYSTEM, "value": j.site.fin}},
        "performer": [{"identifier": {"system": FIN_SYSTEM, "value": j.cmo}}],
    }


def render_specimen(j: Journey) -> dict[str, Any]:
    c = j.collection
    assert c.volume_ml is not None
    return {
        "resourceType": "Specimen",
        "id": j.fhir.specimen,
        "meta": _meta(c.collected_at, j.record_lag_minutes[2]),
        "identifier": [{"system": ISBT128_DIN_SYSTEM, "value": c.din}],
        "accessionIdentifier": {
            "system": f"urn:cmohub:sandbox:collection:{j.site.fin}",
            "value": c.collection_id,
        },
        "status": "available",
        "type": {
            "coding": [
                {
                    "system": "urn:cmohub:sandbox:specimen-type",
                    "code": "apheresis",
                    "display": "Leukapheresis product",
                }
            ]
        },
        "subject": {"reference": f"Patient/{j.fhir.patient}"},
        "request": [_therapy_event_ref(j)],
        "collection": {
            "collectedDateTime": local_iso(c.collected_at, j.site.time_zone),
            "quantity": {
                "value": c.volume_ml,
                "unit": "mL",
                "system": "http://unitsofmeasure.org",
                "code": "mL",
            },
        },
    }


def render_procedure(j: Journey) -> dict[str, Any]:
    i = j.infusion
    return {
        "resourceType": "Procedure",
        "id": j.fhir.procedure,
        "meta": _meta(i.infused_at, j.record_lag_minutes[3]),
        "contained": [
            {
                "resourceType": "Medication",
                "id": "product",
                "code": {"coding": [{"system": PRODUCT_SYSTEM, "code": j.product}]},
                "batch": {"lotNumber": i.batch_id},
            }
        ],
        "identifier": [
            {"system": f"urn:cmohub:sandbox:infusion:{j.site.fin}", "value": i.infusion_id}
        ],
        "basedOn": [_therapy_event_ref(j)],
        "status": "completed",
        "code": {
            "coding": [
                {
                    "system": "urn:cmohub:sandbox:procedure",
                    "code": "cell-therapy-infusion",
                    "display": "Autologous cell therapy infusion",
                }
            ]
        },
        "subject": {"reference": f"Patient/{j.fhir.patient}"},
        "performedDateTime": local_iso(i.infused_at, j.site.time_zone),
        "location": {"identifier": {"system": FIN_SYSTEM, "value": j.site.fin}},
        "usedReference": [{"reference": "#product"}],
    }


def render_malformed_procedure(j: Journey) -> dict[str, Any]:
    """A draft infusion record that is valid JSON but not valid FHIR: no subject, bad date."""
    return {
        "resourceType": "Procedure",
        "id": j.fhir.malformed_procedure,
        "meta": _meta(j.infusion.infused_at, j.record_lag_minutes[3] - 20),
        "basedOn": [_therapy_event_ref(j)],
        "status": "completed",
        "performedDateTime": f"{j.infusion.infused_at:%Y}-13-45T25:61:00",
    }


def dumps(resource: dict[str, Any]) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))


class FhirWriter:
    def __init__(self, tree: TreeWriter, tally: Tally) -> None:
        self.tree = tree
        self.tally = tally

    def _put(self, resource: dict[str, Any]) -> int:
        kind = resource["resourceType"]
        self.tally.sources[f"fhir.{kind}"] += 1
        return self.tree.append(ndjson_path(kind), dumps(resource) + "\n")

    def write(self, j: Journey) -> None:
        self._put(render_patient(j))
        if not j.order_via_hl7:
            self._put(render_service_request(j))
        self._put(render_specimen(j))
        if j.fault is Fault.MALFORMED_FHIR_RESOURCE:
            line = self._put(render_malformed_procedure(j))
            self.tally.planted.append(
                PlantedFault(
                    Fault.MALFORMED_FHIR_RESOURCE,
                    {
                        "file": ndjson_path("Procedure"),
                        "line": line,
                        "resource_type": "Procedure",
                        "id": j.fhir.malformed_procedure,
                    },
                    "Procedure without subject and with an impossible performedDateTime",
                )
            )
        self._put(render_procedure(j))

    def write_pages(self, last_updated: str) -> None:
        """Searchset pages over the finished NDJSON files (read back one line at a time)."""
        for kind in RESOURCE_TYPES:
            total = self.tree.records(ndjson_path(kind))
            pages = max(1, -(-total // PAGE_SIZE))
            if total == 0:
                self._page(kind, 1, 1, total=0, entries=[], updated=last_updated)
                continue
            with (self.tree.root / ndjson_path(kind)).open(encoding="utf-8") as lines:
                for page in range(1, pages + 1):
                    entries = []
                    for _ in range(min(PAGE_SIZE, total - (page - 1) * PAGE_SIZE)):
                        text = next(lines).rstrip("\n")
                        rid = json.loads(text)["id"]
                        entries.append(
                            f'{{"fullUrl":"{FHIR_BASE}/{kind}/{rid}","resource":{text},'
                            '"search":{"mode":"match"}}'
                        )
                    self._page(
                        kind, page, pages, total=total, entries=entries, updated=last_updated
                    )

    def _page(
        self, kind: str, page: int, pages: int, *, total: int, entries: list[str], updated: str
    ) -> None:
        self.tree.write(
            f"clinical/fhir/pages/{kind}/page-{page:05d}.json",
            _bundle(kind, page, pages, total=total, entries=entries, last_updated=updated),
        )
        self.tally.sources["fhir.pages"] += 1


def page_url(kind: str, page: int) -> str:
    return f"{FHIR_BASE}/{kind}?_count={PAGE_SIZE}&_page={page}"


def _bundle(
    kind: str, page: int, pages: int, *, total: int, entries: list[str], last_updated: str
) -> str:
    links = [{"relation": "self", "url": page_url(kind, page)}]
    if page < pages:
        links.append({"relation": "next", "url": page_url(kind, page + 1)})
    head = {
        "resourceType": "Bundle",
        "id": f"{kind.lower()}-page-{page:05d}",
        "meta": {"lastUpdated": last_updated},
        "type": "searchset",
        "total": total,
        "link": links,
    }
    body = json.dumps(head, separators=(",", ":"))
    if not entries:  # FHIR forbids empty arrays: an empty page has no "entry"
        return body + "\n"
    return body[:-1] + ',"entry":[\n' + ",\n".join(entries) + "\n]}\n"
