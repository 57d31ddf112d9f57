"""Generate a sandbox program: walk the journeys, render every source, write ``truth.json``.

The tree is written under ``<out>.partial`` and renamed to ``<out>`` when complete, so no
reader ever sees half a program. An existing ``<out>`` is replaced only if it is a previous
sandbox (it has a ``truth.json``); anything else is refused.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from cmohub.contracts.specifications import ProductCatalogEntry
from cmohub.contracts.store import load_product_catalog
from cmohub.errors import ConfigError
from cmohub.lake import canonical_json
from cmohub.sandbox.faults import Fault, FaultPlan, PlantedFault, plan_faults
from cmohub.sandbox.program import (
    DEFAULT_START,
    LOGGER_MAX_GAP_MINUTES,
    MAX_SILENCE_MINUTES,
    Journey,
    ProgramBuilder,
    ProgramConfig,
)
from cmohub.sandbox.sink import TreeWriter
from cmohub.sandbox.world import SITES
from cmohub.sandbox.writers.acme import AcmeWriter
from cmohub.sandbox.writers.borealis import BorealisWriter
from cmohub.sandbox.writers.common import Tally
from cmohub.sandbox.writers.courier import CourierWriter
from cmohub.sandbox.writers.epcis import EpcisWriter
from cmohub.sandbox.writers.fhir import FHIR_BASE, FhirWriter
from cmohub.sandbox.writers.hl7 import Hl7Writer
from cmohub.sandbox.writers.master import ENROLLMENTS, render_enrollment, write_master

#: Bumped whenever the same seed would produce different bytes.
GENERATOR_VERSION = 1
TRUTH = "truth.json"
#: Top-level source folders, as the summary and truth.json count files.
SOURCE_FOLDERS = (
    "sponsor",
    "master",
    "clinical/fhir",
    "clinical/hl7",
    "epcis",
    "courier",
    "cmo/A9996",
    "cmo/A9997",
)


@dataclass(frozen=True)
class GenerationSummary:
    """What ``cmohub sandbox generate`` prints."""

    out: Path
    patients: int
    files_by_source: Mapping[str, int]
    readings: int
    faults_by_rule: Mapping[str, int]
    not_planted: Mapping[str, int]
    canaries: int
    total_bytes: int


def generate_program(
    out: Path,
    *,
    patients: int,
    days: int,
    seed: int,
    start: date = DEFAULT_START,
    faults: frozenset[Fault] = frozenset(Fault),
    catalog: Mapping[str, ProductCatalogEntry] | None = None,
    progress: Callable[[int], None] | None = None,
) -> GenerationSummary:
    """Write a complete sandbox program to ``out``; same arguments, same bytes."""
    if patients < 1 or days < 1:
        raise ConfigError("patients and days must be at least 1", code="SANDBOX_SIZE")
    config = ProgramConfig(patients=patients, days=days, seed=seed, start=start, faults=faults)
    catalog = catalog if catalog is not None else load_product_catalog()
    unspecified = sorted(
        code for code, entry in catalog.items() if entry.in_force_on(config.first_day) is None
    )
    if unspecified:
        raise ConfigError(
            f"no release specification in force on {config.first_day} for "
            f"{', '.join(unspecified)}; choose a later --start",
            code="SANDBOX_START",
        )
    plan = plan_faults(faults, patients, random.Random(f"cmohub-sandbox:{seed}:plan"))
    staging = _prepare(out)
    tree = TreeWriter(staging)
    generation = _Generation(tree, config, catalog, plan)
    generation.run(progress)
    tree.close()
    generation.plant_duplicates()
    truth = generation.truth()
    tree.write(TRUTH, canonical_json(truth))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return generation.summary(out, truth)


def _prepare(out: Path) -> Path:
    if out.exists() and any(out.iterdir()) and not (out / TRUTH).is_file():
        raise ConfigError(
            "output folder is not empty and is not a sandbox program; choose another --out",
            code="SANDBOX_OUT_NOT_EMPTY",
            where=str(out),
        )
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


class _Generation:
    def __init__(
        self,
        tree: TreeWriter,
        config: ProgramConfig,
        catalog: Mapping[str, ProductCatalogEntry],
        plan: FaultPlan,
    ) -> None:
        self.tree = tree
        self.config = config
        self.catalog = catalog
        self.plan = plan
        self.tally = Tally()
        self.builder = ProgramBuilder(config, catalog, plan)
        self.fhir = FhirWriter(tree, self.tally)
        self.hl7 = Hl7Writer(tree, self.tally)
        self.epcis = EpcisWriter(tree, self.tally)
        self.courier = CourierWriter(tree, self.tally)
        self.acme = AcmeWriter(tree, self.tally)
        self.borealis = BorealisWriter(tree, self.tally)
        self.faults: list[PlantedFault] = []
        self.canaries: list[dict[str, Any]] = []
        self.datasets: Counter[str] = Counter()
        self.last_event = datetime.combine(config.start, time(0), tzinfo=UTC)

    def run(self, progress: Callable[[int], None] | None) -> None:
        write_master(self.tree, self.tally, self.builder.lots, self.builder.rosters.values())
        for journey in self.builder.journeys():
            self.write(journey)
            if progress is not None:
                progress(journey.index + 1)
        self.tree.flush()
        self.fhir.write_pages(f"{self.last_event:%Y-%m-%dT%H:%M:%S}Z")

    def write(self, j: Journey) -> None:
        self.tree.append(ENROLLMENTS, render_enrollment(j))
        self.tally.sources["sponsor.enrollments"] += 1
        self.fhir.write(j)
        self.hl7.write(j)
        stray_event_file = self.epcis.write(j)
        self.courier.write(j)
        stray_batch_file = self.acme.write(j) or self.borealis.write(j)
        for planted in j.planted:
            key = dict(planted.key)
            if planted.fault is Fault.COI_CHECK_INVALID and stray_event_file:
                key["file"] = stray_event_file
            if planted.fault is Fault.COI_UNKNOWN and stray_batch_file:
                key["file"] = stray_batch_file
            self.faults.append(PlantedFault(planted.fault, key, planted.detail))
        self.faults.extend(self.tally.planted)
        self.tally.planted.clear()
        if j.canary:
            self.canaries.append(
                {
                    "therapy_event": j.therapy_event,
                    "site": j.site.fin,
                    "tokens": dict(j.patient.canary_tokens),
                }
            )
        self._count_datasets(j)
        self.last_event = max(self.last_event, j.infusion.infused_at, j.release.decided_at)

    def _count_datasets(self, j: Journey) -> None:
        d = self.datasets
        d["clinical.order"] += 1
        d["clinical.collection"] += 1
        d["clinical.infusion"] += 1
        d["logistics.shipment"] += 2
        d["logistics.shipment_leg"] += sum(len(p.legs) for p in j.shipments)
        d["logistics.custody_event"] += sum(1 for _ in j.custody_events())
        d["logistics.temperature_reading"] += sum(t.count for t in j.traces())
        d["manufacturing.batch"] += 1
        d["manufacturing.batch_step"] += len(j.steps)
        d["manufacturing.material_consumption"] += len(j.materials)
        d["manufacturing.deviation"] += len(j.deviations)
        d["manufacturing.environmental_monitoring"] += len(j.monitoring)
        d["quality.qc_result"] += len(j.qc)
        d["quality.release_decision"] += 1

    def plant_duplicates(self) -> None:
        """Deliver some CMO files again, byte for byte, under another name two days later."""
        count = self.plan.file_faults.get(Fault.DUPLICATE_FILE, 0)
        if not count:
            return
        candidates = [p for p in self.tree.paths() if p.startswith("cmo/") and "_LIMS_" not in p]
        rng = random.Random(f"cmohub-sandbox:{self.config.seed}:duplicates")
        for original in rng.sample(candidates, min(count, len(candidates))):
            folder, name = original.rsplit("/", 1)
            cmo_root, day = folder.rsplit("/", 1)
            later = date.fromisoformat(day).toordinal() + 2
            stem, ext = name.rsplit(".", 1)
            copy = f"{cmo_root}/{date.fromordinal(later).isoformat()}/{stem}_RESENT.{ext}"
            self.tree.write(copy, (self.tree.root / original).read_bytes())
            self.faults.append(
                PlantedFault(
                    Fault.DUPLICATE_FILE,
                    {"file": copy, "original": original},
                    "the same bytes delivered again under another name two days later",
                )
            )
        self.tally.sources["cmo.duplicate_files"] += min(count, len(candidates))

    def truth(self) -> dict[str, Any]:
        by_rule = Counter(f.rule.value for f in self.faults)
        quarantined = {
            rule: n
            for rule, n in sorted(by_rule.items())
            if rule in ("COI_CHECK_INVALID", "COI_UNKNOWN", "RECORD_MALFORMED")
        }
        datasets = dict(sorted(self.datasets.items()))
        datasets["master.site"] = len(SITES)
        datasets["master.product"] = len(self.catalog)
        datasets["master.reagent_lot"] = self.tally.sources["master.reagent_lots"]
        datasets["master.certified_operator"] = self.tally.sources["master.certifications"]
        not_planted = Counter({f.value: n for f, n in self.plan.not_planted.items()})
        not_planted.update({f.value: n for f, n in self.builder.skipped.items()})
        return {
            "generator": {
                "version": GENERATOR_VERSION,
                "seed": self.config.seed,
                "patients": self.config.patients,
                "days": self.config.days,
                "start": self.config.start.isoformat(),
                "faults": sorted(f.value for f in self.config.faults),
                "fhir_base": FHIR_BASE,
                "logger_max_gap_minutes": LOGGER_MAX_GAP_MINUTES,
                "custody_max_silence_minutes": MAX_SILENCE_MINUTES,
            },
            "faults": [f.to_dict() for f in self.faults],
            "faults_by_rule": dict(sorted(by_rule.items())),
            "not_planted": dict(sorted(not_planted.items())),
            "canaries": self.canaries,
            "counts": {
                "patients": self.config.patients,
                "sources": dict(sorted(self.tally.sources.items())),
                "files": self._files_by_source(),
                "datasets": datasets,
                "quarantined": quarantined,
                "duplicate_files": by_rule.get("FILE_DUPLICATE", 0),
            },
        }

    def _files_by_source(self) -> dict[str, int]:
        counts = dict.fromkeys(SOURCE_FOLDERS, 0)
        for path in self.tree.paths():
            for folder in SOURCE_FOLDERS:
                if path.startswith(folder + "/"):
                    counts[folder] += 1
                    break
        return counts

    def summary(self, out: Path, truth: Mapping[str, Any]) -> GenerationSummary:
        counts = truth["counts"]
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        return GenerationSummary(
            out=out,
            patients=self.config.patients,
            files_by_source=counts["files"],
            readings=counts["datasets"]["logistics.temperature_reading"],
            faults_by_rule=truth["faults_by_rule"],
            not_planted=truth["not_planted"],
            canaries=len(self.canaries),
            total_bytes=total,
        )
