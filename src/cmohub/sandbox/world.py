"""The fixed cast of the sandbox program: sites, couriers, CMOs, process steps, reagents, EM limits.

Everything here is a constant or a pure function of the program's dates and a seeded random
source. Numbers that belong to a *product* (temperature classes, excursion budget, vein-to-vein
target, release specifications) are not here: they come from
:func:`cmohub.contracts.store.load_product_catalog`.

Parties and locations use GS1 keys built from the facility's FIN under the GS1 example company
prefix ``0614141`` (``A9990`` → SGLN ``urn:epc:id:sgln:0614141.99990.0``, PGLN
``urn:epc:id:pgln:0614141.99990``); ``master/sites.csv`` lists the mapping.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from zoneinfo import ZoneInfo

from cmohub.domain import CertifiedOperator, MonitoringKind, ReagentLot, Site, SiteKind

GS1_PREFIX = "0614141"
SPONSOR_FIN = "A9999"
COURIER_HUB_FIN = "A9995"
ACME_FIN = "A9996"
BOREALIS_FIN = "A9997"
HL7_SITE_FIN = "A9992"  # the one clinical site whose orders arrive as HL7 v2, not FHIR


@dataclass(frozen=True, slots=True)
class SandboxSite:
    fin: str
    name: str
    kind: SiteKind
    time_zone: str
    cmo: str | None = None  # clinical sites: the CMO that manufactures for them

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def sgln(self) -> str:
        return sgln(self.fin)

    @property
    def pgln(self) -> str:
        return pgln(self.fin)

    def to_record(self) -> Site:
        return Site(fin=self.fin, site_name=self.name, kind=self.kind, time_zone=self.time_zone)


def sgln(fin: str) -> str:
    """The GS1 location (SGLN) of a facility: the FIN's digits as location reference."""
    return f"urn:epc:id:sgln:{GS1_PREFIX}.9{fin[1:]}.0"


def pgln(fin: str) -> str:
    """The GS1 party (PGLN) of the organisation operating a facility."""
    return f"urn:epc:id:pgln:{GS1_PREFIX}.9{fin[1:]}"


SITES: tuple[SandboxSite, ...] = (
    SandboxSite(
        "A9990",
        "Sandbox Clinic Berlin (synthetic)",
        SiteKind.CLINICAL,
        "Europe/Berlin",
        BOREALIS_FIN,
    ),
    SandboxSite(
        "A9991",
        "Sandbox Clinic New York (synthetic)",
        SiteKind.CLINICAL,
        "America/New_York",
        ACME_FIN,
    ),
    SandboxSite(
        "A9992",
        "Sandbox Clinic London (synthetic)",
        SiteKind.CLINICAL,
        "Europe/London",
        BOREALIS_FIN,
    ),
    SandboxSite(
        "A9993",
        "Sandbox Clinic Chicago (synthetic)",
        SiteKind.CLINICAL,
        "America/Chicago",
        ACME_FIN,
    ),
    SandboxSite(
        COURIER_HUB_FIN,
        "Polar Cryo Hub Keflavik (synthetic)",
        SiteKind.COURIER_HUB,
        "Atlantic/Reykjavik",
    ),
    SandboxSite(ACME_FIN, "Acme Cell Manufacturing (synthetic)", SiteKind.CMO, "America/New_York"),
    SandboxSite(BOREALIS_FIN, "Borealis Biologics (synthetic)", SiteKind.CMO, "Europe/Oslo"),
    SandboxSite(
        SPONSOR_FIN, "Sandbox Therapeutics sponsor (synthetic)", SiteKind.CMO, "Europe/Zurich"
    ),
)
SITE_BY_FIN: dict[str, SandboxSite] = {s.fin: s for s in SITES}
CLINICAL_SITES: tuple[SandboxSite, ...] = tuple(s for s in SITES if s.kind is SiteKind.CLINICAL)


@dataclass(frozen=True, slots=True)
class Courier:
    code: str
    name: str
    party_ref: str  # digits of its PGLN party reference
    logger_export: str  # "epcis": readings as EPCIS sensor events; "csv": logger CSV files

    @property
    def pgln(self) -> str:
        return f"urn:epc:id:pgln:{GS1_PREFIX}.{self.party_ref}"


POLAR = Courier("POLAR", "Polar Cryo Logistics (synthetic)", "88801", "epcis")
CRYOWAY = Courier("CRYOWAY", "Cryoway Express (synthetic)", "88802", "csv")
COURIERS: tuple[Courier, ...] = (POLAR, CRYOWAY)
COURIER_BY_CODE = {c.code: c for c in COURIERS}


def finished_product_courier(cmo: str) -> Courier:
    """Acme ships finished product with Polar, Borealis with Cryoway (whose loggers export CSV)."""
    return POLAR if cmo == ACME_FIN else CRYOWAY


# --- manufacturing process -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaterialSpec:
    code: str
    name: str
    supplier: str
    shelf_life_days: int
    unit: str  # UCUM


MATERIALS: tuple[MaterialSpec, ...] = (
    MaterialSpec(
        "MAT-SELECT-BEADS", "Selection microbeads (synthetic)", "Sandbox Reagents GmbH", 300, "mL"
    ),
    MaterialSpec(
        "MAT-ACTIVATOR", "T-cell activation reagent (synthetic)", "Example Bio Inc.", 240, "mL"
    ),
    MaterialSpec(
        "MAT-LVV-CD19",
        "Lentiviral vector anti-CD19 CAR (synthetic)",
        "Vector Sandbox Ltd",
        360,
        "mL",
    ),
    MaterialSpec(
        "MAT-LVV-TCR02", "Lentiviral vector TCR-02 (synthetic)", "Vector Sandbox Ltd", 360, "mL"
    ),
    MaterialSpec(
        "MAT-MEDIUM", "Serum-free T-cell medium (synthetic)", "Example Bio Inc.", 180, "mL"
    ),
    MaterialSpec(
        "MAT-CYTOKINE", "IL-7/IL-15 cytokine mix (synthetic)", "Sandbox Reagents GmbH", 270, "ug"
    ),
    MaterialSpec(
        "MAT-CRYO-MEDIUM",
        "Cryopreservation medium 10% DMSO (synthetic)",
        "Example Bio Inc.",
        365,
        "mL",
    ),
)
MATERIAL_BY_CODE = {m.code: m for m in MATERIALS}


@dataclass(frozen=True, slots=True)
class StepTemplate:
    code: str  # canonical step code (master data and the canonical batch_step dataset use it)
    min_minutes: int
    max_minutes: int
    gap_before: tuple[int, int]  # minutes after the previous step ends (min, max)
    materials: tuple[tuple[str, float], ...]  # (material code or "LVV", quantity)


STEPS: tuple[StepTemplate, ...] = (
    StepTemplate("selection", 180, 240, (0, 0), (("MAT-SELECT-BEADS", 7.5),)),
    StepTemplate(
        "activation", 120, 180, (15, 60), (("MAT-ACTIVATOR", 10.0), ("MAT-MEDIUM", 250.0))
    ),
    StepTemplate("transduction", 180, 240, (960, 1200), (("LVV", 5.0),)),
    StepTemplate(
        "expansion", 8640, 10080, (30, 90), (("MAT-MEDIUM", 1000.0), ("MAT-CYTOKINE", 50.0))
    ),
    StepTemplate("harvest", 180, 240, (15, 60), ()),
    StepTemplate("formulation", 120, 180, (15, 60), (("MAT-CRYO-MEDIUM", 70.0),)),
)
STEP_CODES: tuple[str, ...] = tuple(s.code for s in STEPS)
VECTOR_BY_PRODUCT = {"SBX-CART-01": "MAT-LVV-CD19", "SBX-TCR-02": "MAT-LVV-TCR02"}


# --- environmental monitoring (EU GMP Annex 1, grade B in operation) -------------------------


@dataclass(frozen=True, slots=True)
class EmLimit:
    kind: MonitoringKind
    unit: str  # UCUM
    typical: tuple[float, float]  # clean values are drawn from this range
    alert: float
    action: float


EM_LIMITS: tuple[EmLimit, ...] = (
    EmLimit(MonitoringKind.PARTICLES_0_5, "/m3", (20_000.0, 900_000.0), 2_000_000.0, 3_520_000.0),
    EmLimit(MonitoringKind.PARTICLES_5_0, "/m3", (0.0, 6_000.0), 15_000.0, 29_300.0),
    EmLimit(MonitoringKind.VIABLE_AIR, "[CFU]/m3", (0.0, 3.0), 5.0, 10.0),
)
EM_BY_KIND = {e.kind: e for e in EM_LIMITS}


# --- master data builders --------------------------------------------------------------------

LOT_CADENCE_DAYS = 30


@dataclass(frozen=True, slots=True)
class SandboxLot:
    """A reagent lot with the date it was made (a lot is usable from 14 days after that)."""

    record: ReagentLot
    manufactured_on: date


def build_reagent_lots(first: date, last: date) -> tuple[SandboxLot, ...]:
    """Lots of every material made every 30 days, so that on any day in [first, last] there is
    an unexpired lot to use and a recently expired one to plant a fault with."""
    lots: list[SandboxLot] = []
    for m_index, spec in enumerate(MATERIALS):
        made = first - timedelta(days=spec.shelf_life_days + 90 + 7 * m_index)
        seq = 1
        while made <= last:
            lot_number = f"{spec.code.removeprefix('MAT-')}-{made:%y%m}{seq:03d}"
            lots.append(
                SandboxLot(
                    ReagentLot(
                        material_code=spec.code,
                        lot_number=lot_number,
                        supplier=spec.supplier,
                        expiry_on=made + timedelta(days=spec.shelf_life_days),
                    ),
                    manufactured_on=made,
                )
            )
            made += timedelta(days=LOT_CADENCE_DAYS)
            seq += 1
    return tuple(lots)


@dataclass(frozen=True)
class OperatorRoster:
    """Certified operators and trainees of one CMO (trainees hold one certification only)."""

    cmo: str
    operators: tuple[str, ...]
    trainees: tuple[str, ...]
    certifications: tuple[CertifiedOperator, ...]

    periods_index: dict[tuple[str, str], tuple[tuple[date, date], ...]]

    def certified(self, operator_id: str, step_code: str, day: date) -> bool:
        """Whether ``operator_id`` holds a certification for ``step_code`` on ``day``."""
        periods = self.periods_index.get((operator_id, step_code), ())
        return any(start <= day < until for start, until in periods)


def build_roster(cmo: str, first: date, last: date, rng: random.Random) -> OperatorRoster:
    """Operators certified for three steps each, every step covered by at least four operators.

    Each certification is held in two periods: an initial one ending on a day inside the
    program and a renewal that starts either on that day or, for some, three weeks later — so
    an operator can be *uncertified* for a while, which the assignment of operators respects.
    """
    prefix = "ACME" if cmo == ACME_FIN else "BOR"
    operators = tuple(f"{prefix}-OP-{n:03d}" for n in range(1, 15))
    trainees = tuple(f"{prefix}-TR-{n:02d}" for n in range(1, 3))
    span = max((last - first).days, 1)
    certs: list[CertifiedOperator] = []
    for index, operator in enumerate(operators):
        for k in range(3):
            step = STEP_CODES[(index + k * 2) % len(STEP_CODES)]
            split = first + timedelta(days=rng.randrange(span))
            # Only every third operator ever lapses, so each step always has certified staff.
            lapse = 21 if index % 3 == 0 and rng.random() < 0.7 else 0
            certs.append(
                CertifiedOperator(
                    operator_id=operator,
                    cmo=cmo,
                    step_code=step,
                    certified_from=first - timedelta(days=400),
                    certified_until=split,
                )
            )
            certs.append(
                CertifiedOperator(
                    operator_id=operator,
                    cmo=cmo,
                    step_code=step,
                    certified_from=split + timedelta(days=lapse),
                    certified_until=last + timedelta(days=400),
                )
            )
    for trainee in trainees:
        certs.append(
            CertifiedOperator(
                operator_id=trainee,
                cmo=cmo,
                step_code="harvest",
                certified_from=first - timedelta(days=30),
                certified_until=last + timedelta(days=400),
            )
        )
    certs.sort(key=lambda c: (c.operator_id, c.step_code, c.certified_from))
    periods: dict[tuple[str, str], list[tuple[date, date]]] = {}
    for c in certs:
        periods.setdefault((c.operator_id, c.step_code), []).append(
            (c.certified_from, c.certified_until)
        )
    return OperatorRoster(
        cmo, operators, trainees, tuple(certs), {k: tuple(v) for k, v in periods.items()}
    )


def qualified_person(cmo: str, n: int) -> str:
    return f"{'ACME' if cmo == ACME_FIN else 'BOR'}-QP-{n:02d}"
