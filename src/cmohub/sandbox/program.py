"""The pure world model of the sandbox: one patient's therapy journey at a time.

:class:`ProgramBuilder` turns a patient index, a seed and the product catalog into a
:class:`Journey` — the canonical facts (cmohub.domain records, keyed by COI) of one autologous
therapy from order to infusion, plus the patient's synthetic identity, which only the
clinical feeds and the enrollment register carry. Writers render journeys into each source's
wire format; nothing here does I/O.

Journeys must be built in index order (shared state: COIs already issued, DIN sequences, CMO
suites, counters), and each uses its own random source derived from the seed and its index,
so the same seed always yields the same program. Temperature readings are never held: a
:class:`LoggerTrace` describes a leg's logger and :func:`iter_readings` regenerates its
readings on demand.

A clean journey is truly clean — every reconciliation rule passes with a margin of at least
a day on every date comparison, so the time zone a rule uses cannot flip its outcome. A
fault changes exactly the facts its rule looks at (see ``docs/sandbox.md``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from cmohub.contracts.specifications import ProductCatalogEntry
from cmohub.domain import (
    Batch,
    BatchStatus,
    BatchStep,
    Collection,
    CustodyAction,
    CustodyEvent,
    Decision,
    Deviation,
    DeviationClass,
    DeviationStatus,
    EnvironmentalMonitoringResult,
    Infusion,
    InfusionStatus,
    MaterialConsumption,
    MonitoringKind,
    Order,
    OrderStatus,
    ProductSpecification,
    QcResult,
    QcStatus,
    ReleaseDecision,
    Shipment,
    ShipmentKind,
    ShipmentLeg,
    SpecLimit,
    TemperatureClass,
)
from cmohub.identifiers import MOD37_ALPHABET, allocate_coi, allocate_din
from cmohub.sandbox.faults import HL7_FAULTS, Fault, FaultPlan, PlantedFault
from cmohub.sandbox.timeutil import at_local, local_date, offset_minutes, offset_text
from cmohub.sandbox.world import (
    ACME_FIN,
    BOREALIS_FIN,
    CLINICAL_SITES,
    COURIER_HUB_FIN,
    EM_LIMITS,
    HL7_SITE_FIN,
    MATERIAL_BY_CODE,
    POLAR,
    SITE_BY_FIN,
    SPONSOR_FIN,
    STEPS,
    VECTOR_BY_PRODUCT,
    Courier,
    OperatorRoster,
    SandboxLot,
    SandboxSite,
    build_reagent_lots,
    build_roster,
    finished_product_courier,
    qualified_person,
)

DEFAULT_START = date(2026, 1, 5)
PRODUCT_SHARES = (("SBX-CART-01", 0.65), ("SBX-TCR-02", 0.35))
#: Custody silence the lanes allow (ShipmentLeg.max_silence_minutes); clean gaps stay far below.
MAX_SILENCE_MINUTES = 720
#: Loggers record once a minute; a logger gap is more than this many minutes without a reading.
LOGGER_MAX_GAP_MINUTES = 10
#: Every date comparison of a clean journey holds with at least this margin (days).
MARGIN_DAYS = 2
MRN_SYSTEM = "urn:cmohub:sandbox:mrn:{fin}"
NATO = (
    "Alfa",
    "Bravo",
    "Charlie",
    "Delta",
    "Echo",
    "Foxtrot",
    "Golf",
    "Hotel",
    "India",
    "Juliett",
    "Kilo",
    "Lima",
    "Mike",
    "November",
    "Oscar",
    "Papa",
    "Quebec",
    "Romeo",
    "Sierra",
    "Tango",
    "Uniform",
    "Victor",
    "Whiskey",
    "Xray",
    "Yankee",
    "Zulu",
)
COUNTRY = {"A9990": "DE", "A9991": "US", "A9992": "GB", "A9993": "US"}
_CANARY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: unambiguous
_DEVIATION_CATEGORIES = ("process", "equipment", "documentation", "environment", "material")


@dataclass(frozen=True, slots=True)
class ProgramConfig:
    patients: int
    days: int
    seed: int
    start: date = DEFAULT_START
    faults: frozenset[Fault] = frozenset(Fault)

    @property
    def first_day(self) -> date:
        """First day any master data must cover (lots expired before it exist, too)."""
        return self.start - timedelta(days=30)

    @property
    def last_day(self) -> date:
        """Last day an event of the program can fall on (with room for postponed infusions)."""
        return self.start + timedelta(days=self.days + 75)


# --- patients ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyntheticPatient:
    """The clinical identity of a synthetic patient (MRN, name, birth date, contact)."""

    mrn: str
    mrn_system: str
    family: str
    given: str
    birth_date: date
    sex: str  # FHIR administrative gender: female / male
    phone: str
    email: str
    address_line: str
    city: str
    postal_code: str
    country: str
    updated_phone: str | None = None  # sent by an ADT^A08 (HL7 site only)
    canary_tokens: Mapping[str, str] = field(default_factory=dict)


def _token(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_CANARY_ALPHABET) for _ in range(n))


def synthesize_patient(
    index: int, site: SandboxSite, rng: random.Random, *, canary: bool, adt_update: bool
) -> SyntheticPatient:
    """An obviously synthetic patient; a canary carries a unique greppable token in every field."""
    number = index + 1
    if canary:
        token = "CNRY" + _token(rng, 10)
        birth = date(1901 + rng.randrange(9), 1 + rng.randrange(12), 1 + rng.randrange(28))
        phone = f"+44-7700-9{rng.randrange(10**6):06d}"
        updated = f"+44-7700-8{rng.randrange(10**6):06d}" if adt_update else None
        patient = SyntheticPatient(
            mrn=f"SBX-MRN-{token}",
            mrn_system=MRN_SYSTEM.format(fin=site.fin),
            family=f"Fam{token}",
            given=f"Giv{token}",
            birth_date=birth,
            sex="female" if rng.random() < 0.5 else "male",
            phone=phone,
            email=f"{token.lower()}@canary.example.invalid",
            address_line=f"{1 + rng.randrange(99)} {token} Lane",
            city="Canaryville",
            postal_code="SBX 000",
            country=COUNTRY[site.fin],
            updated_phone=updated,
        )
        tokens = {
            "mrn": patient.mrn,
            "family": patient.family,
            "given": patient.given,
            "phone": phone,
            "email": patient.email,
            "address": token + " Lane",
            "birth_date": birth.isoformat(),
            "birth_date_hl7": f"{birth:%Y%m%d}",
        }
        if updated is not None:
            tokens["phone_updated"] = updated
        return replace(patient, canary_tokens=tokens)
    birth = date(1950 + rng.randrange(55), 1 + rng.randrange(12), 1 + rng.randrange(28))
    return SyntheticPatient(
        mrn=f"SBX-MRN-{site.fin}-{number:06d}",
        mrn_system=MRN_SYSTEM.format(fin=site.fin),
        family="Testpatient",
        given=f"{NATO[index % len(NATO)]}-{number:06d}",
        birth_date=birth,
        sex="female" if rng.random() < 0.5 else "male",
        phone=f"+1-555-01{number % 100:02d}",
        email=f"testpatient.{number:06d}@example.invalid",
        address_line=f"{1 + index % 250} Synthetic Street",
        city="Testville",
        postal_code=f"SBX {index % 1000:03d}",
        country=COUNTRY[site.fin],
        updated_phone=f"+1-555-02{number % 100:02d}" if adt_update else None,
    )


# --- loggers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoggerTrace:
    """Everything needed to regenerate one leg's logger readings (one per minute)."""

    logger_id: str
    shipment_id: str
    leg_no: int
    coi: str
    first_reading: datetime  # UTC; reading k is at first_reading + k minutes
    minutes: int  # readings at k = 0 .. minutes (inclusive)
    nominal: float
    floor: float  # clean readings stay within [floor, ceiling], far inside the class
    ceiling: float
    seed: str
    utc_offset: int  # minutes; readings are stamped in the origin's offset at departure
    export: str  # "epcis" or "csv"
    excursion: tuple[int, int, float] | None = None  # (first minute, minutes, level °C)
    gap: tuple[int, int] | None = None  # (first missing minute, minutes missing)

    @property
    def count(self) -> int:
        missing = self.gap[1] if self.gap else 0
        return self.minutes + 1 - missing


def iter_readings(trace: LoggerTrace) -> Iterator[tuple[int, float]]:
    """(minute index, °C rounded to 0.1) for each reading of ``trace``, in time order."""
    rng = random.Random(trace.seed)
    gauss, uniform = rng.gauss, rng.uniform
    nominal, floor, ceiling = trace.nominal, trace.floor, trace.ceiling
    sigma = 0.12 if ceiling - floor < 10 else 0.6
    ex_start, ex_end, level = -1, -1, 0.0
    if trace.excursion is not None:
        ex_start, ex_len, level = trace.excursion
        ex_end = ex_start + ex_len
    gap_start, gap_end = -1, -1
    if trace.gap is not None:
        gap_start, gap_end = trace.gap[0], trace.gap[0] + trace.gap[1]
    value = nominal
    for k in range(trace.minutes + 1):
        value += (nominal - value) * 0.2 + gauss(0.0, sigma)
        value = min(max(value, floor), ceiling)
        reading = level + uniform(-0.3, 0.3) if ex_start <= k < ex_end else value
        if gap_start <= k < gap_end:
            continue
        yield k, round(reading, 1)


# --- shipments -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LegPlan:
    leg: ShipmentLeg
    trace: LoggerTrace
    origin_zone: str
    destination_zone: str


@dataclass(frozen=True, slots=True)
class ShipmentPlan:
    shipment: Shipment
    courier: Courier
    legs: tuple[LegPlan, ...]
    custody: tuple[CustodyEvent, ...]  # shipping/departing/arriving/receiving per leg
    temperature_class: TemperatureClass

    @property
    def delivered_at(self) -> datetime:
        arrived = self.legs[-1].leg.arrived_at
        assert arrived is not None  # every sandbox leg arrives
        return arrived


@dataclass(frozen=True, slots=True)
class StrayCustodyEvent:
    """A custody observation whose COI text is corrupted (check character changed)."""

    event_id: str
    coi_text: str
    true_coi: str
    shipment_id: str
    event_time: datetime
    site: str


@dataclass(frozen=True, slots=True)
class FhirIds:
    patient: str
    service_request: str
    specimen: str
    procedure: str
    malformed_procedure: str


@dataclass(frozen=True)
class Journey:
    """One patient's therapy, from enrollment to infusion, as canonical facts."""

    index: int
    therapy_event: str
    coi: str
    patient: SyntheticPatient
    site: SandboxSite
    product: str
    cmo: str
    enrolled_at: datetime
    order: Order
    collection: Collection
    commissioning: tuple[CustodyEvent, CustodyEvent]  # starting material, finished product
    starting: ShipmentPlan
    batch: Batch
    steps: tuple[BatchStep, ...]
    materials: tuple[MaterialConsumption, ...]
    monitoring: tuple[tuple[int, EnvironmentalMonitoringResult], ...]  # (step_no, sample)
    deviations: tuple[Deviation, ...]
    qc: tuple[QcResult, ...]
    release: ReleaseDecision
    finished: ShipmentPlan
    infusion: Infusion
    fhir: FhirIds
    adt_update_at: datetime | None
    record_lag_minutes: tuple[int, int, int, int]  # FHIR lastUpdated lag: Pat, SR, Spec, Proc
    fault: Fault | None = None
    planted: tuple[PlantedFault, ...] = ()
    stray_custody: StrayCustodyEvent | None = None
    stray_batch: Batch | None = None

    @property
    def canary(self) -> bool:
        return bool(self.patient.canary_tokens)

    @property
    def shipments(self) -> tuple[ShipmentPlan, ShipmentPlan]:
        return (self.starting, self.finished)

    @property
    def order_via_hl7(self) -> bool:
        return self.site.fin == HL7_SITE_FIN

    def custody_events(self) -> Iterator[CustodyEvent]:
        yield self.commissioning[0]
        yield from self.starting.custody
        yield self.commissioning[1]
        yield from self.finished.custody

    def traces(self) -> Iterator[LoggerTrace]:
        for plan in self.shipments:
            for leg in plan.legs:
                yield leg.trace


# --- the builder ---------------------------------------------------------------------------


@dataclass
class _Suites:
    """Cleanroom suites of one CMO, each holding at most one batch at a time."""

    prefix: str
    busy: list[list[tuple[datetime, datetime]]] = field(default_factory=list)

    def allocate(self, start: datetime, end: datetime, horizon: datetime) -> str:
        for index, intervals in enumerate(self.busy):
            intervals[:] = [iv for iv in intervals if iv[1] >= horizon]
            if all(end <= s or start >= e for s, e in intervals):
                intervals.append((start, end))
                return f"{self.prefix}{index + 1:03d}"
        self.busy.append([(start, end)])
        return f"{self.prefix}{len(self.busy):03d}"


class ProgramBuilder:
    """Builds journeys in index order; holds the little state journeys share."""

    def __init__(
        self,
        config: ProgramConfig,
        catalog: Mapping[str, ProductCatalogEntry],
        plan: FaultPlan,
    ) -> None:
        missing = {code for code, _ in PRODUCT_SHARES} - set(catalog)
        if missing:
            raise ValueError(f"product catalog lacks {sorted(missing)}")
        self.config = config
        self.catalog = catalog
        self.plan = plan
        self.lots = build_reagent_lots(config.first_day, config.last_day)
        self._lots_by_material: dict[str, list[SandboxLot]] = {}
        for lot in self.lots:
            self._lots_by_material.setdefault(lot.record.material_code, []).append(lot)
        roster_rng = random.Random(f"cmohub-sandbox:{config.seed}:roster")
        self.rosters: dict[str, OperatorRoster] = {
            cmo: build_roster(cmo, config.first_day, config.last_day, roster_rng)
            for cmo in (ACME_FIN, BOREALIS_FIN)
        }
        self._suites = {ACME_FIN: _Suites("RM-"), BOREALIS_FIN: _Suites("CR-")}
        self._issued: set[str] = set()
        self._din_seq: dict[str, int] = {}
        self._counters: dict[str, int] = {}
        self._last_clean: Journey | None = None
        self._partners_used: set[int] = set()
        self.skipped: dict[Fault, int] = {}  # faults that found no partner patient
        self._next = 0

    # counters give every record a unique, deterministic identifier
    def _count(self, name: str) -> int:
        self._counters[name] = self._counters.get(name, 0) + 1
        return self._counters[name]

    def partner(self) -> Journey | None:
        """The most recent clean journey not yet used by a DIN fault (shares its DIN)."""
        last = self._last_clean
        if last is None or last.index in self._partners_used:
            return None
        self._partners_used.add(last.index)
        return last

    def _new_coi(self, rng: random.Random, year: int) -> str:
        while True:
            coi = str(allocate_coi(SPONSOR_FIN, year, rng))
            if coi not in self._issued:
                self._issued.add(coi)
                return coi

    def build(self, index: int) -> Journey:
        if index != self._next:
            raise ValueError("journeys must be built in index order")
        self._next += 1
        journey = _JourneyBuilder(self, index).build()
        if journey.fault is None and not journey.canary:
            self._last_clean = journey
        return journey

    def journeys(self) -> Iterator[Journey]:
        for index in range(self.config.patients):
            yield self.build(index)


def iter_journeys(
    config: ProgramConfig, catalog: Mapping[str, ProductCatalogEntry], plan: FaultPlan
) -> Iterator[Journey]:
    """Every journey of the program, one at a time (nothing accumulates)."""
    return ProgramBuilder(config, catalog, plan).journeys()


def _uuid(rng: random.Random) -> str:
    return f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"


def _minutes(rng: random.Random, low: int, high: int) -> timedelta:
    return timedelta(minutes=rng.randint(low, high))


def _days_around(day: date) -> tuple[date, ...]:
    return tuple(day + timedelta(days=d) for d in range(-MARGIN_DAYS, MARGIN_DAYS + 1))


def _class_band(cls: TemperatureClass) -> tuple[float, float, float]:
    """(nominal, floor, ceiling) of clean readings: well inside the class."""
    if cls.lower_celsius is not None and cls.upper_celsius is not None:
        mid = (cls.lower_celsius + cls.upper_celsius) / 2
        half = (cls.upper_celsius - cls.lower_celsius) / 2
        return mid, mid - half * 0.4, mid + half * 0.4
    upper = cls.upper_celsius if cls.upper_celsius is not None else -150.0
    return upper - 35.0, upper - 45.0, upper - 25.0


def _excursion_level(cls: TemperatureClass, rng: random.Random) -> float:
    if cls.upper_celsius is not None and cls.lower_celsius is not None:
        return cls.upper_celsius + rng.uniform(2.0, 4.0)
    upper = cls.upper_celsius if cls.upper_celsius is not None else -150.0
    return upper + rng.uniform(15.0, 40.0)


class _JourneyBuilder:
    """Builds one journey; every draw comes from the journey's own random source."""

    def __init__(self, program: ProgramBuilder, index: int) -> None:
        self.p = program
        self.index = index
        self.rng = random.Random(f"cmohub-sandbox:{program.config.seed}:patient:{index}")
        self.fault = program.plan.fault_of(index)
        self.planted: list[PlantedFault] = []
        # Decisions about where a fault goes are drawn first, from their own source, so a
        # journey's clean facts do not depend on which fault (if any) it hosts.
        choice = random.Random(f"cmohub-sandbox:{program.config.seed}:fault:{index}")
        self.fault_on_finished = choice.random() < 0.5  # which shipment, for shipment faults
        self.fault_step = choice.randrange(len(STEPS))  # which step, for step faults
        self.fault_material = choice.random()  # which consumption, for the expired lot
        self.partner: Journey | None = None
        if self.fault in (Fault.DIN_MULTIPLE_COI, Fault.BATCH_COI_MISMATCH):
            self.partner = program.partner()
            if self.partner is None:
                program.skipped[self.fault] = program.skipped.get(self.fault, 0) + 1
                self.fault = None

    # --- helpers --------------------------------------------------------------------------

    def plant(self, key: Mapping[str, str | int | list[str]], detail: str) -> None:
        assert self.fault is not None
        self.planted.append(PlantedFault(self.fault, dict(key), detail))

    def _site(self) -> SandboxSite:
        rng, plan = self.rng, self.p.plan
        site = CLINICAL_SITES[rng.randrange(len(CLINICAL_SITES))]
        first_canary = min(plan.canaries) if plan.canaries else -1
        if self.fault in HL7_FAULTS or self.index == first_canary:
            site = SITE_BY_FIN[HL7_SITE_FIN]
        if self.fault is Fault.DIN_MULTIPLE_COI and self.partner is not None:
            site = self.partner.site
        return site

    def _product(self) -> str:
        draw = self.rng.random()
        total = 0.0
        for code, share in PRODUCT_SHARES:
            total += share
            if draw < total:
                return code
        return PRODUCT_SHARES[-1][0]

    # --- the journey ----------------------------------------------------------------------

    def build(self) -> Journey:
        rng, cfg = self.rng, self.p.config
        site = self._site()
        product = self._product()
        entry = self.p.catalog[product]
        cmo = site.cmo
        assert cmo is not None
        number = self.index + 1
        enroll_day = cfg.start + timedelta(days=(self.index * cfg.days) // max(cfg.patients, 1))
        # Later journeys start manufacturing after their own (later) enrollment: suite
        # bookings that ended before this day can be forgotten.
        self.horizon = at_local(enroll_day, 0, "UTC") - timedelta(days=1)
        enrolled_at = at_local(enroll_day, rng.randint(8 * 60, 16 * 60), site.time_zone)
        coi = self.p._new_coi(rng, enroll_day.year)
        canary = self.index in self.p.plan.canaries
        adt_update = site.fin == HL7_SITE_FIN and (canary or rng.random() < 0.4)
        patient = synthesize_patient(self.index, site, rng, canary=canary, adt_update=adt_update)
        fhir = FhirIds(*(f"{rng.getrandbits(64):016x}" for _ in range(5)))

        # order and collection
        ordered_at = enrolled_at + _minutes(rng, 5, 90)
        collection_day = local_date(ordered_at, site.time_zone) + timedelta(days=rng.randint(4, 8))
        collected_at = at_local(collection_day, rng.randint(12 * 60, 16 * 60 + 59), site.time_zone)
        din = self._din(site, collected_at, coi)
        order = Order(
            order_id=f"SBX-PO-{site.fin}-{number:06d}",
            coi=coi,
            product_code=product,
            ordering_site=site.fin,
            collection_site=site.fin,
            ordered_at=ordered_at,
            status=OrderStatus.COMPLETED,
            planned_collection_on=collection_day,
        )
        collection = Collection(
            collection_id=f"SBX-COL-{number:06d}",
            coi=coi,
            din=din,
            site=site.fin,
            collected_at=collected_at,
            volume_ml=round(rng.uniform(150.0, 300.0), 1),
        )
        sm_commissioning = self._commissioning(coi, site.fin, collected_at + _minutes(rng, 10, 30))

        # starting material: collection site -> hub -> CMO (Polar)
        starting = self._shipment(
            coi=coi,
            product=product,
            kind=ShipmentKind.STARTING_MATERIAL,
            courier=POLAR,
            origin=site,
            destination=SITE_BY_FIN[cmo],
            booked_at=ordered_at + _minutes(rng, 60, 20 * 60),
            depart_at=collected_at + _minutes(rng, 60, 180),
            cls=entry.product.starting_material_class,
        )

        # manufacturing
        batch_start = starting.delivered_at + _minutes(rng, 120, 600)
        batch_id, steps, materials, monitoring = self._manufacture(cmo, product, batch_start, rng)
        completed_at = steps[-1].ended_at
        batch_din = din
        if self.fault is Fault.BATCH_COI_MISMATCH and self.partner is not None:
            batch_din = self.partner.collection.din
            self.plant(
                {"batch_id": batch_id, "coi": coi, "din": batch_din},
                f"batch record of {coi} names DIN {batch_din}, which was collected under "
                f"{self.partner.coi}",
            )
        batch = Batch(
            batch_id=batch_id,
            coi=coi,
            din=batch_din,
            cmo=cmo,
            product_code=product,
            started_at=steps[0].started_at,
            completed_at=completed_at,
            status=BatchStatus.COMPLETE,
        )
        fp_commissioning = self._commissioning(coi, cmo, completed_at + _minutes(rng, 10, 30))

        # quality control and release (planned)
        qc, planned_release = self._quality(entry, cmo, batch_id, completed_at, rng)

        # finished product: CMO -> hub -> treating site
        finished = self._shipment(
            coi=coi,
            product=product,
            kind=ShipmentKind.FINISHED_PRODUCT,
            courier=finished_product_courier(cmo),
            origin=SITE_BY_FIN[cmo],
            destination=site,
            booked_at=planned_release + _minutes(rng, 0, 120),
            depart_at=planned_release + _minutes(rng, 12 * 60, 36 * 60),
            cls=entry.product.finished_product_class,
        )
        infusion_day = local_date(finished.delivered_at, site.time_zone) + timedelta(
            days=rng.randint(1, 2)
        )
        infused_at = at_local(infusion_day, rng.randint(9 * 60, 15 * 60), site.time_zone)
        target = timedelta(days=entry.product.vein_to_vein_target_days)
        if self.fault is Fault.VEIN_TO_VEIN_OVER_TARGET:
            late_day = local_date(collected_at + target, site.time_zone) + timedelta(
                days=rng.randint(2, 5)
            )
            infused_at = at_local(late_day, rng.randint(9 * 60, 15 * 60), site.time_zone)
            days = (infused_at - collected_at) / timedelta(days=1)
            self.plant(
                {"coi": coi},
                f"infusion postponed: {days:.1f} days from collection "
                f"(target {entry.product.vein_to_vein_target_days})",
            )
        elif infused_at - collected_at > target - timedelta(days=MARGIN_DAYS):
            raise AssertionError("sandbox timeline exceeds the vein-to-vein margin")  # a bug

        decided_at = planned_release
        if self.fault is Fault.INFUSION_BEFORE_RELEASE:
            decided_at = infused_at + _minutes(rng, 4 * 60, 48 * 60)
            self.plant(
                {"coi": coi, "batch_id": batch_id},
                "infused before the release decision was recorded",
            )
        spec = entry.in_force_on(local_date(decided_at, SITE_BY_FIN[cmo].time_zone))
        assert spec is not None
        release = ReleaseDecision(
            batch_id=batch_id,
            coi=coi,
            decision=Decision.RELEASED,
            decided_at=decided_at,
            decided_by=qualified_person(cmo, 1 + rng.randrange(3)),
            spec_version=spec.version,
        )
        qc = self._release_faults(qc, entry, cmo, spec, release)
        deviations = self._deviations(cmo, batch_id, steps, decided_at, rng)

        infusion = Infusion(
            infusion_id=f"SBX-INF-{number:06d}",
            coi=coi,
            batch_id=batch_id,
            site=site.fin,
            infused_at=infused_at,
            status=InfusionStatus.COMPLETED,
        )
        adt_update_at = ordered_at + _minutes(rng, 24 * 60, 48 * 60) if adt_update else None
        lags = (rng.randint(1, 30), rng.randint(1, 30), rng.randint(30, 120), rng.randint(30, 240))

        stray_custody = self._stray_custody(coi, cmo, starting)
        stray_batch = self._stray_batch(site, cmo, product, batch, rng)
        starting, finished = self._custody_fault(starting, finished)

        return Journey(
            index=self.index,
            therapy_event=f"SBX-TE-{number:06d}",
            coi=coi,
            patient=patient,
            site=site,
            product=product,
            cmo=cmo,
            enrolled_at=enrolled_at,
            order=order,
            collection=collection,
            commissioning=(sm_commissioning, fp_commissioning),
            starting=starting,
            batch=batch,
            steps=steps,
            materials=materials,
            monitoring=monitoring,
            deviations=deviations,
            qc=qc,
            release=release,
            finished=finished,
            infusion=infusion,
            fhir=fhir,
            adt_update_at=adt_update_at,
            record_lag_minutes=lags,
            fault=self.fault,
            planted=tuple(self.planted),
            stray_custody=stray_custody,
            stray_batch=stray_batch,
        )

    # --- identifiers ----------------------------------------------------------------------

    def _din(self, site: SandboxSite, collected_at: datetime, coi: str) -> str:
        last = self.partner
        if self.fault is Fault.DIN_MULTIPLE_COI and last is not None:
            din = last.collection.din
            self.plant(
                {"din": din, "coi": coi, "cois": sorted([last.coi, coi])},
                f"collection of {coi} labelled with the DIN already used for {last.coi}",
            )
            return din
        seq = self.p._din_seq.get(site.fin, 0) + 1
        self.p._din_seq[site.fin] = seq
        return str(allocate_din(site.fin, collected_at.year, seq))

    # --- custody --------------------------------------------------------------------------

    def _commissioning(self, coi: str, fin: str, when: datetime) -> CustodyEvent:
        zone_name = SITE_BY_FIN[fin].time_zone
        return CustodyEvent(
            event_id=_uuid(self.rng),
            coi=coi,
            shipment_id=None,
            event_time=when,
            event_time_zone_offset=offset_text(offset_minutes(when, zone_name)),
            action=CustodyAction.ADD,
            biz_step="commissioning",
            disposition="active",
            read_point=SITE_BY_FIN[fin].sgln,
            biz_location=SITE_BY_FIN[fin].sgln,
            source_party=None,
            destination_party=SITE_BY_FIN[fin].pgln,
        )

    def _shipment(
        self,
        *,
        coi: str,
        product: str,
        kind: ShipmentKind,
        courier: Courier,
        origin: SandboxSite,
        destination: SandboxSite,
        booked_at: datetime,
        depart_at: datetime,
        cls: TemperatureClass,
    ) -> ShipmentPlan:
        rng = self.rng
        seq = self.p._count(f"shipment:{courier.code}")
        shipment_id = f"PLR{seq:010d}" if courier is POLAR else f"CWY-{seq:08d}"
        hub = SITE_BY_FIN[COURIER_HUB_FIN]
        legs: list[LegPlan] = []
        custody: list[CustodyEvent] = []
        nominal, floor, ceiling = _class_band(cls)
        stops = ((origin, hub, (90, 240)), (hub, destination, (180, 420)))
        departed = depart_at
        for leg_no, (src, dst, (low, high)) in enumerate(stops, start=1):
            transit = rng.randint(low, high)
            arrived = departed + timedelta(minutes=transit)
            lseq = self.p._count(f"logger:{courier.code}")
            logger_id = f"PLR-LG-{lseq:06d}" if courier is POLAR else f"CWY{lseq:07d}"
            shipper_id = f"DS-{self.p._count('shipper'):06d}"
            leg = ShipmentLeg(
                shipment_id=shipment_id,
                leg_no=leg_no,
                origin=src.fin,
                destination=dst.fin,
                shipper_id=shipper_id,
                logger_id=logger_id,
                departed_at=departed,
                arrived_at=arrived,
                max_silence_minutes=MAX_SILENCE_MINUTES,
            )
            trace = LoggerTrace(
                logger_id=logger_id,
                shipment_id=shipment_id,
                leg_no=leg_no,
                coi=coi,
                first_reading=departed,
                minutes=transit,
                nominal=nominal,
                floor=floor,
                ceiling=ceiling,
                seed=f"cmohub-sandbox:{self.p.config.seed}:logger:{logger_id}",
                utc_offset=offset_minutes(departed, src.time_zone),
                export=courier.logger_export,
            )
            legs.append(LegPlan(leg, trace, src.time_zone, dst.time_zone))
            custody.extend(
                self._handoff(coi, shipment_id, src, courier, departed, giving=True)
                + self._handoff(coi, shipment_id, dst, courier, arrived, giving=False)
            )
            departed = arrived + _minutes(rng, 60, 240)
        shipment = Shipment(
            shipment_id=shipment_id,
            coi=coi,
            kind=kind,
            product_code=product,
            origin=origin.fin,
            destination=destination.fin,
            courier=courier.code,
            booked_at=min(booked_at, depart_at - timedelta(hours=2)),
        )
        plan = ShipmentPlan(shipment, courier, tuple(legs), tuple(custody), cls)
        return self._logger_faults(plan, kind, cls)

    def _handoff(
        self,
        coi: str,
        shipment_id: str,
        site: SandboxSite,
        courier: Courier,
        moment: datetime,
        *,
        giving: bool,
    ) -> list[CustodyEvent]:
        """shipping+departing when ``site`` hands over, arriving+receiving when it takes over."""
        rng = self.rng
        party = site.pgln
        offset = offset_text(offset_minutes(moment, site.time_zone))
        common = {
            "coi": coi,
            "shipment_id": shipment_id,
            "event_time_zone_offset": offset,
            "action": CustodyAction.OBSERVE,
            "read_point": site.sgln,
            "biz_location": site.sgln,
        }
        if giving:
            return [
                CustodyEvent(
                    event_id=_uuid(rng),
                    event_time=moment - _minutes(rng, 5, 20),
                    biz_step="shipping",
                    disposition="in_transit",
                    source_party=party,
                    destination_party=courier.pgln,
                    **common,
                ),
                CustodyEvent(
                    event_id=_uuid(rng),
                    event_time=moment,
                    biz_step="departing",
                    disposition="in_transit",
                    **common,
                ),
            ]
        return [
            CustodyEvent(
                event_id=_uuid(rng),
                event_time=moment,
                biz_step="arriving",
                disposition="in_transit",
                **common,
            ),
            CustodyEvent(
                event_id=_uuid(rng),
                event_time=moment + _minutes(rng, 5, 20),
                biz_step="receiving",
                disposition="in_progress",
                source_party=courier.pgln,
                destination_party=party,
                **common,
            ),
        ]

    def _logger_faults(
        self, plan: ShipmentPlan, kind: ShipmentKind, cls: TemperatureClass
    ) -> ShipmentPlan:
        """Excursion or logger gap on the longest leg of one shipment, chosen by a coin."""
        fault = self.fault
        if fault not in (Fault.TEMPERATURE_EXCURSION, Fault.LOGGER_GAP):
            return plan
        if self.fault_on_finished != (kind is ShipmentKind.FINISHED_PRODUCT):
            return plan
        rng = self.rng
        target = max(plan.legs, key=lambda lp: lp.trace.minutes)
        trace = target.trace
        entry = self.p.catalog[plan.shipment.product_code]
        if fault is Fault.TEMPERATURE_EXCURSION:
            budget = entry.product.excursion_budget_minutes
            length = budget + rng.randint(10, 40)
            first = rng.randint(10, trace.minutes - length - 10)
            level = round(_excursion_level(cls, rng), 1)
            new = replace(trace, excursion=(first, length, level))
            self.plant(
                {
                    "shipment_id": trace.shipment_id,
                    "leg_no": trace.leg_no,
                    "logger_id": trace.logger_id,
                    "coi": trace.coi,
                },
                f"{length} minutes at about {level} °C, outside {cls.code} "
                f"(budget {budget} minutes)",
            )
        else:
            length = min(rng.randint(45, 120), trace.minutes - 40)
            first = rng.randint(15, trace.minutes - length - 15)
            new = replace(trace, gap=(first, length))
            self.plant(
                {
                    "shipment_id": trace.shipment_id,
                    "leg_no": trace.leg_no,
                    "logger_id": trace.logger_id,
                    "coi": trace.coi,
                },
                f"logger silent for {length} minutes (allowed {LOGGER_MAX_GAP_MINUTES})",
            )
        legs = tuple(
            LegPlan(lp.leg, new, lp.origin_zone, lp.destination_zone) if lp is target else lp
            for lp in plan.legs
        )
        return ShipmentPlan(plan.shipment, plan.courier, legs, plan.custody, plan.temperature_class)

    def _custody_fault(
        self, starting: ShipmentPlan, finished: ShipmentPlan
    ) -> tuple[ShipmentPlan, ShipmentPlan]:
        """Drop the hub's arriving/receiving of leg 1 of one shipment: possession jumps."""
        if self.fault is not Fault.CUSTODY_GAP:
            return starting, finished
        plan = finished if self.fault_on_finished else starting
        # custody is [shipping, departing, arriving, receiving] per leg: drop leg 1's arrival
        dropped = {e.event_id for e in plan.custody[2:4]}
        gapped = ShipmentPlan(
            plan.shipment,
            plan.courier,
            plan.legs,
            tuple(e for e in plan.custody if e.event_id not in dropped),
            plan.temperature_class,
        )
        self.plant(
            {"shipment_id": plan.shipment.shipment_id, "coi": plan.shipment.coi, "leg_no": 1},
            "no arriving/receiving at the courier hub: possession passes from the courier "
            "to the hub unrecorded",
        )
        return (starting, gapped) if self.fault_on_finished else (gapped, finished)

    def _stray_custody(
        self, coi: str, cmo: str, starting: ShipmentPlan
    ) -> StrayCustodyEvent | None:
        if self.fault is not Fault.COI_CHECK_INVALID:
            return None
        wrong = self.rng.choice([c for c in MOD37_ALPHABET if c != coi[-1]])
        corrupted = coi[:-1] + wrong
        when = starting.custody[-1].event_time + _minutes(self.rng, 10, 60)
        stray = StrayCustodyEvent(
            event_id=_uuid(self.rng),
            coi_text=corrupted,
            true_coi=coi,
            shipment_id=starting.shipment.shipment_id,
            event_time=when,
            site=cmo,
        )
        self.plant(
            {"coi": corrupted, "event_id": stray.event_id},
            f"inspection event at {cmo} carries {corrupted} (check character of {coi} changed)",
        )
        return stray

    def _stray_batch(
        self, site: SandboxSite, cmo: str, product: str, batch: Batch, rng: random.Random
    ) -> Batch | None:
        if self.fault is not Fault.COI_UNKNOWN:
            return None
        unknown = self.p._new_coi(rng, batch.started_at.year)  # reserved: never enrolled
        seq = 900_000 + self.p._count("stray-din")
        din = str(allocate_din(site.fin, batch.started_at.year, seq))
        started = batch.started_at + _minutes(rng, 60, 180)
        stray = Batch(
            batch_id=self._batch_id(cmo, started),
            coi=unknown,
            din=din,
            cmo=cmo,
            product_code=product,
            started_at=started,
            completed_at=started + _minutes(rng, 60, 240),
            status=BatchStatus.ABORTED,
        )
        self.plant(
            {"coi": unknown, "batch_id": stray.batch_id, "cmo": cmo},
            "aborted batch registered under a COI the sponsor never issued",
        )
        return stray

    # --- manufacturing --------------------------------------------------------------------

    def _batch_id(self, cmo: str, started: datetime) -> str:
        seq = self.p._count(f"batch:{cmo}")
        yy = started.year % 100
        return f"ACM-{yy:02d}-{seq:05d}" if cmo == ACME_FIN else f"BOR{yy:02d}{seq:05d}"

    def _manufacture(
        self, cmo: str, product: str, start: datetime, rng: random.Random
    ) -> tuple[
        str,
        tuple[BatchStep, ...],
        tuple[MaterialConsumption, ...],
        tuple[tuple[int, EnvironmentalMonitoringResult], ...],
    ]:
        batch_id = self._batch_id(cmo, start)
        roster = self.p.rosters[cmo]
        spans: list[tuple[datetime, datetime]] = []
        moment = start
        for template in STEPS:
            moment += _minutes(rng, *template.gap_before)
            end = moment + _minutes(rng, template.min_minutes, template.max_minutes)
            spans.append((moment, end))
            moment = end
        suite = self.p._suites[cmo].allocate(
            spans[0][0] - timedelta(hours=1), spans[-1][1] + timedelta(hours=1), self.horizon
        )
        fault_step = self.fault_step + 1
        uses = [
            (n, m) for n, t in enumerate(STEPS, 1) for m, _ in t.materials
        ]  # every (step_no, material) consumption of the batch
        expired_use = uses[int(self.fault_material * len(uses))]
        steps: list[BatchStep] = []
        materials: list[MaterialConsumption] = []
        monitoring: list[tuple[int, EnvironmentalMonitoringResult]] = []
        for step_no, (template, (began, ended)) in enumerate(zip(STEPS, spans, strict=True), 1):
            uncertified = self.fault is Fault.OPERATOR_NOT_CERTIFIED and step_no == fault_step
            operator = self._operator(roster, template.code, began, uncertified=uncertified)
            steps.append(
                BatchStep(
                    batch_id=batch_id,
                    step_no=step_no,
                    step_code=template.code,
                    suite_id=suite,
                    operator_id=operator,
                    started_at=began,
                    ended_at=ended,
                )
            )
            if uncertified:
                self.plant(
                    {"batch_id": batch_id, "step_no": step_no, "operator_id": operator},
                    f"{operator} holds no certification for {template.code} on "
                    f"{began.date().isoformat()}",
                )
            for material, quantity in template.materials:
                code = VECTOR_BY_PRODUCT[product] if material == "LVV" else material
                used_at = began + _minutes(rng, 5, 30)
                expired = self.fault is Fault.REAGENT_EXPIRED and (step_no, material) == expired_use
                lot = self._lot(code, used_at.date(), expired=expired)
                materials.append(
                    MaterialConsumption(
                        batch_id=batch_id,
                        step_no=step_no,
                        material_code=code,
                        lot_number=lot.record.lot_number,
                        expiry_on=lot.record.expiry_on,
                        used_at=used_at,
                        quantity=quantity,
                        unit=MATERIAL_BY_CODE[code].unit,
                    )
                )
                if expired:
                    self.plant(
                        {
                            "batch_id": batch_id,
                            "step_no": step_no,
                            "material_code": code,
                            "lot_number": lot.record.lot_number,
                        },
                        f"lot expired {lot.record.expiry_on.isoformat()}, used "
                        f"{used_at.date().isoformat()}",
                    )
            monitoring.extend(
                (step_no, sample)
                for sample in self._monitoring(cmo, suite, began, ended, step_no == fault_step)
            )
        if self.fault is Fault.EM_ACTION_LIMIT:
            step_no, sample = next((n, s) for n, s in monitoring if s.value > s.action_limit)
            self.plant(
                {
                    "batch_id": batch_id,
                    "step_no": step_no,
                    "suite_id": suite,
                    "sample_id": sample.sample_id,
                },
                f"{sample.kind.value} {sample.value:g} {sample.unit} over action limit "
                f"{sample.action_limit:g} during {STEPS[step_no - 1].code}",
            )
        return batch_id, tuple(steps), tuple(materials), tuple(monitoring)

    def _operator(
        self, roster: OperatorRoster, step_code: str, began: datetime, *, uncertified: bool
    ) -> str:
        """A certified operator (on every day around the step's start), or, for the fault, one
        who holds no certification for the step on any of those days."""
        days = _days_around(began.date())
        if uncertified:
            pool = [
                op
                for op in (*roster.trainees, *roster.operators)
                if not any(roster.certified(op, step_code, d) for d in days)
            ]
        else:
            pool = [
                op
                for op in roster.operators
                if all(roster.certified(op, step_code, d) for d in days)
            ]
        if not pool:
            raise AssertionError(f"roster cannot staff {step_code}")  # a bug in build_roster
        return pool[self.rng.randrange(len(pool))]

    def _lot(self, code: str, day: date, *, expired: bool) -> SandboxLot:
        lots = self.p._lots_by_material[code]
        if expired:
            candidates = [
                lot
                for lot in lots
                if day - timedelta(days=90) <= lot.record.expiry_on <= day - timedelta(days=3)
            ]
            return candidates[-1]
        usable = [
            lot
            for lot in lots
            if lot.manufactured_on <= day - timedelta(days=14)
            and lot.record.expiry_on >= day + timedelta(days=30)
        ]
        return usable[self.rng.randrange(len(usable))]

    def _monitoring(
        self, cmo: str, suite: str, began: datetime, ended: datetime, fault_step: bool
    ) -> list[EnvironmentalMonitoringResult]:
        rng = self.rng
        samples: list[EnvironmentalMonitoringResult] = []
        when = began + _minutes(rng, 15, 40)
        sessions: list[datetime] = []
        while when < ended - timedelta(minutes=30):
            sessions.append(when)
            when += timedelta(hours=24)
        over = None
        if fault_step and self.fault is Fault.EM_ACTION_LIMIT:
            over = (rng.randrange(len(sessions)), rng.choice(EM_LIMITS).kind)
        prefix = "EM-ACM" if cmo == ACME_FIN else "EMB"
        for s_index, sampled_at in enumerate(sessions):
            for limit in EM_LIMITS:
                seq = self.p._count(f"em:{cmo}")
                low, high = limit.typical
                value = rng.uniform(low, high)
                if rng.random() < 0.04:  # an alert-level reading: noticed, not an exception
                    value = rng.uniform(limit.alert, limit.action * 0.95)
                if over == (s_index, limit.kind):
                    value = limit.action * rng.uniform(1.2, 2.5)
                rounded = (
                    round(value) if limit.kind is not MonitoringKind.VIABLE_AIR else round(value, 1)
                )
                samples.append(
                    EnvironmentalMonitoringResult(
                        sample_id=f"{prefix}-{seq:07d}",
                        cmo=cmo,
                        suite_id=suite,
                        sampled_at=sampled_at + timedelta(minutes=EM_LIMITS.index(limit)),
                        kind=limit.kind,
                        value=float(rounded),
                        unit=limit.unit,
                        alert_limit=limit.alert,
                        action_limit=limit.action,
                    )
                )
        return samples

    # --- quality --------------------------------------------------------------------------

    def _quality(
        self,
        entry: ProductCatalogEntry,
        cmo: str,
        batch_id: str,
        completed_at: datetime,
        rng: random.Random,
    ) -> tuple[tuple[QcResult, ...], datetime]:
        """Final QC results (values inside every version in force around each test date) and
        the planned release: after the last result."""
        panel: dict[str, SpecLimit] = {}
        day = completed_at.date()
        for offset in range(-1, 61):
            spec = entry.in_force_on(day + timedelta(days=offset))
            if spec is not None:
                for limit in spec.limits:
                    panel.setdefault(limit.test_code, limit)
        results: list[QcResult] = []
        for test_code, limit in panel.items():
            low_h, high_h = QC_DELAY_HOURS.get(test_code, (24, 72))
            tested_at = completed_at + _minutes(rng, low_h * 60, high_h * 60)
            results.append(self._qc_result(entry, cmo, batch_id, limit, tested_at, clean=True))
        if self.fault is Fault.QC_OUT_OF_SPEC:
            results = self._out_of_spec(entry, cmo, results)
        release = max(r.tested_at for r in results) + _minutes(rng, 6 * 60, 30 * 60)
        return tuple(results), release

    def _limits_around(
        self, entry: ProductCatalogEntry, test_code: str, when: datetime
    ) -> list[SpecLimit]:
        found: list[SpecLimit] = []
        for d in _days_around(when.date()):
            spec = entry.in_force_on(d)
            if spec is None:
                continue
            found.extend(limit for limit in spec.limits if limit.test_code == test_code)
        return found

    def _qc_result(
        self,
        entry: ProductCatalogEntry,
        cmo: str,
        batch_id: str,
        limit: SpecLimit,
        tested_at: datetime,
        *,
        clean: bool,
        result_id: str | None = None,
    ) -> QcResult:
        rng = self.rng
        limits = self._limits_around(entry, limit.test_code, tested_at) or [limit]
        if result_id is None:
            seq = self.p._count(f"qc:{cmo}")
            result_id = f"LIMS-{seq:07d}" if cmo == ACME_FIN else f"R{seq:08d}"
        common = {
            "result_id": result_id,
            "batch_id": batch_id,
            "test_code": limit.test_code,
            "tested_at": tested_at,
            "status": QcStatus.FINAL,
        }
        if limit.allowed_text is not None:
            allowed = [
                t for t in limit.allowed_text if all(t in (x.allowed_text or ()) for x in limits)
            ]
            text = allowed[0] if clean else OUT_OF_SPEC_TEXT[limit.test_code]
            return QcResult(value_text=text, **common)
        lowers = [x.lower for x in limits if x.lower is not None]
        uppers = [x.upper for x in limits if x.upper is not None]
        natural_low, natural_high = QC_NATURAL_RANGE.get(limit.test_code, (0.0, 100.0))
        lo = max(lowers) + 0.5 if lowers else natural_low
        hi = min(uppers) - 0.3 if uppers else natural_high
        value = round(rng.uniform(lo, max(lo, hi)), 1)
        return QcResult(value=value, unit=limit.unit, **common)

    def _out_of_spec(
        self, entry: ProductCatalogEntry, cmo: str, results: list[QcResult]
    ) -> list[QcResult]:
        rng = self.rng
        numeric = [
            r
            for r in results
            if r.value is not None and self._limits_around(entry, r.test_code, r.tested_at)
        ]
        target = numeric[rng.randrange(len(numeric))]
        limits = self._limits_around(entry, target.test_code, target.tested_at)
        lowers = [x.lower for x in limits if x.lower is not None]
        uppers = [x.upper for x in limits if x.upper is not None]
        one_limit = len(set(lowers)) == 1 and len(lowers) == len(limits)
        if lowers and one_limit and target.test_code == "VIAB" and rng.random() < 0.5:
            # Between the old and the new limit: only the version in force rejects it.
            older = [
                x.lower
                for spec in entry.specifications
                for x in spec.limits
                if x.test_code == "VIAB" and x.lower is not None and x.lower < min(lowers)
            ]
            bottom = max(older) + 0.5 if older else min(lowers) - 4.0
            value = round(rng.uniform(bottom, min(lowers) - 0.5), 1)
        elif lowers:
            value = round(max(0.0, min(lowers) - rng.uniform(2.0, 8.0)), 1)
        else:
            value = round(min(uppers) + rng.uniform(0.5, 3.0), 1)
        bad = QcResult(
            result_id=target.result_id,
            batch_id=target.batch_id,
            test_code=target.test_code,
            value=value,
            unit=target.unit,
            tested_at=target.tested_at,
            status=QcStatus.FINAL,
        )
        spec = entry.in_force_on(target.tested_at.date())
        self.plant(
            {
                "batch_id": target.batch_id,
                "test_code": target.test_code,
                "result_id": target.result_id,
            },
            f"{target.test_code} = {value:g} {target.unit or ''} outside specification "
            f"v{spec.version if spec else '?'} in force on {target.tested_at.date().isoformat()}",
        )
        return [bad if r is target else r for r in results]

    def _release_faults(
        self,
        qc: tuple[QcResult, ...],
        entry: ProductCatalogEntry,
        cmo: str,
        spec: ProductSpecification,
        release: ReleaseDecision,
    ) -> tuple[QcResult, ...]:
        """For the fault, one required result of the release's specification arrives late."""
        if self.fault is not Fault.RELEASE_BEFORE_RESULTS:
            return qc
        required = {limit.test_code: limit for limit in spec.limits if limit.required}
        candidates = [r for r in qc if r.test_code in required]
        target = candidates[self.rng.randrange(len(candidates))]
        late = release.decided_at + _minutes(self.rng, 12 * 60, 72 * 60)
        moved = self._qc_result(
            entry,
            cmo,
            release.batch_id,
            required[target.test_code],
            late,
            clean=True,
            result_id=target.result_id,
        )
        self.plant(
            {"batch_id": release.batch_id, "test_code": target.test_code},
            f"released {release.decided_at.isoformat()}, final {target.test_code} result "
            f"only {late.isoformat()}",
        )
        return tuple(moved if r is target else r for r in qc)

    def _deviations(
        self,
        cmo: str,
        batch_id: str,
        steps: tuple[BatchStep, ...],
        decided_at: datetime,
        rng: random.Random,
    ) -> tuple[Deviation, ...]:
        def new_id() -> str:
            seq = self.p._count(f"deviation:{cmo}")
            return f"DEV-{seq:06d}" if cmo == ACME_FIN else f"AVV-{seq:06d}"

        step = steps[rng.randrange(len(steps))]
        opened = step.started_at + _minutes(rng, 10, 90)
        category = rng.choice(_DEVIATION_CATEGORIES)
        if self.fault is Fault.DEVIATION_OPEN_ON_RELEASED:
            deviation = Deviation(
                deviation_id=new_id(),
                batch_id=batch_id,
                opened_at=opened,
                closed_at=None,
                classification=DeviationClass.MAJOR,
                patient_impact=True,
                status=DeviationStatus.OPEN,
                category=category,
            )
            self.plant(
                {"batch_id": batch_id, "deviation_id": deviation.deviation_id},
                "major deviation with patient impact still open at release",
            )
            return (deviation,)
        draw = rng.random()
        closed_by = decided_at - _minutes(rng, 2 * 60, 24 * 60)
        if draw < 0.15:
            kind, impact, closed = DeviationClass.MINOR, False, True
        elif draw < 0.20:
            kind, impact, closed = DeviationClass.MAJOR, True, True
        elif draw < 0.25:
            kind, impact, closed = DeviationClass.MINOR, False, False
        else:
            return ()
        if closed and closed_by <= opened:
            closed_by = opened + timedelta(hours=1)
        return (
            Deviation(
                deviation_id=new_id(),
                batch_id=batch_id,
                opened_at=opened,
                closed_at=closed_by if closed else None,
                classification=kind,
                patient_impact=impact,
                status=DeviationStatus.CLOSED if closed else DeviationStatus.OPEN,
                category=category,
            ),
        )


#: Hours after batch completion each QC test reports (min, max).
QC_DELAY_HOURS: dict[str, tuple[int, int]] = {
    "VIAB": (2, 12),
    "CD3": (12, 48),
    "CD8": (12, 48),
    "CARPOS": (12, 48),
    "ENDO": (24, 48),
    "MYCO": (48, 96),
    "VCN": (72, 120),
    "RCL": (120, 168),
    "STER": (168, 192),
}
#: Where clean values of a one-sided limit are drawn (the other side).
QC_NATURAL_RANGE: dict[str, tuple[float, float]] = {
    "VIAB": (0.0, 97.0),
    "CD3": (0.0, 99.0),
    "CD8": (0.0, 85.0),
    "CARPOS": (0.0, 65.0),
    "VCN": (0.4, 10.0),
    "ENDO": (0.1, 10.0),
}
OUT_OF_SPEC_TEXT = {"STER": "positive", "MYCO": "positive", "RCL": "detected"}
