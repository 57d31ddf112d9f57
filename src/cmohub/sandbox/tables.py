"""A sandbox program as canonical tables: the ground truth a correct ingest must reproduce.

Built straight from the pure world model (each journey holds its canonical records), without
any wire format in between, so reconciliation rules can be tested and benchmarked on their
own, and staged data can be compared with what the program meant.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from cmohub.contracts.arrow import rows_to_table, to_arrow_schema
from cmohub.contracts.specifications import ProductCatalogEntry
from cmohub.contracts.store import load_contract, load_product_catalog
from cmohub.sandbox.faults import plan_faults
from cmohub.sandbox.program import Journey, ProgramBuilder, ProgramConfig, iter_readings
from cmohub.sandbox.world import SITES


def build_journeys(
    config: ProgramConfig, catalog: Mapping[str, ProductCatalogEntry] | None = None
) -> tuple[ProgramBuilder, list[Journey]]:
    """The builder (rosters, lots) and every journey of a program, as the generator plans it."""
    plan = plan_faults(config.faults, config.patients, random.Random(f"plan:{config.seed}"))
    builder = ProgramBuilder(config, catalog or load_product_catalog(), plan)
    return builder, list(builder.journeys())


def _source(dataset: str) -> str:
    """A stand-in payload hash per dataset: lineage gets the staged ``<sha256>#<locator>`` form."""
    return hashlib.sha256(f"sandbox:{dataset}".encode()).hexdigest()


def _lineage(dataset: str, n: int) -> dict[str, str]:
    return {"_feed": "sandbox", "_run_id": "sandbox", "_source_ref": f"{_source(dataset)}#row={n}"}


def _table(dataset: str, records: Iterable[Any]) -> pa.Table:
    rows = [{**r.model_dump(), **_lineage(dataset, n)} for n, r in enumerate(records, start=1)]
    return rows_to_table(rows, load_contract(dataset))


def canonical_tables(builder: ProgramBuilder, journeys: list[Journey]) -> dict[str, pa.Table]:
    """The clinical, manufacturing, quality and master tables of the program.

    Records that ingest must quarantine (the batch under an unknown COI, stray events with a
    corrupted COI, malformed copies) are not part of the program's canonical data.
    """
    return {
        "clinical.order": _table("clinical.order", (j.order for j in journeys)),
        "clinical.collection": _table("clinical.collection", (j.collection for j in journeys)),
        "clinical.infusion": _table("clinical.infusion", (j.infusion for j in journeys)),
        "manufacturing.batch": _table("manufacturing.batch", (j.batch for j in journeys)),
        "manufacturing.batch_step": _table(
            "manufacturing.batch_step", (s for j in journeys for s in j.steps)
        ),
        "manufacturing.material_consumption": _table(
            "manufacturing.material_consumption", (m for j in journeys for m in j.materials)
        ),
        "manufacturing.deviation": _table(
            "manufacturing.deviation", (d for j in journeys for d in j.deviations)
        ),
        "manufacturing.environmental_monitoring": _table(
            "manufacturing.environmental_monitoring", (e for j in journeys for _, e in j.monitoring)
        ),
        "quality.qc_result": _table("quality.qc_result", (q for j in journeys for q in j.qc)),
        "quality.release_decision": _table(
            "quality.release_decision", (j.release for j in journeys)
        ),
        "master.certified_operator": _table(
            "master.certified_operator",
            (c for r in builder.rosters.values() for c in r.certifications),
        ),
    }


def logistics_tables(journeys: list[Journey]) -> dict[str, pa.Table]:
    """Shipments, legs, custody events (commissioning included) and every logger reading.

    Readings are materialized here (the generator streams them): use modest programs.
    """
    plans = [p for j in journeys for p in (j.starting, j.finished)]
    custody = [
        e for j in journeys for e in (*j.commissioning, *j.starting.custody, *j.finished.custody)
    ]
    readings = readings_table(plans)
    return {
        "logistics.shipment": _table("logistics.shipment", (p.shipment for p in plans)),
        "logistics.shipment_leg": _table(
            "logistics.shipment_leg", (leg.leg for p in plans for leg in p.legs)
        ),
        "logistics.custody_event": _table("logistics.custody_event", custody),
        "logistics.temperature_reading": readings,
    }


def readings_table(plans: Iterable[Any]) -> pa.Table:
    """Every logger reading of the shipments' legs, built column-wise (millions of rows)."""
    contract = load_contract("logistics.temperature_reading")
    schema = to_arrow_schema(contract)
    loggers: list[pa.Array] = []
    shipments: list[pa.Array] = []
    times: list[pa.Array] = []
    values: list[pa.Array] = []
    for plan in plans:
        for leg in plan.legs:
            trace = leg.trace
            pairs = list(iter_readings(trace))
            if not pairs:
                continue
            minutes, celsius = zip(*pairs, strict=True)
            start = int(trace.first_reading.timestamp() * 1_000_000)
            micros = pa.array([start + 60_000_000 * m for m in minutes], pa.int64())
            times.append(micros.cast(pa.timestamp("us", tz="UTC")))
            values.append(pa.array(celsius, pa.float64()))
            loggers.append(pa.array([trace.logger_id] * len(minutes), pa.large_string()))
            shipments.append(pa.array([trace.shipment_id] * len(minutes), pa.large_string()))
    n = sum(len(v) for v in values)
    source = _source("logistics.temperature_reading")
    columns = {
        "logger_id": pa.concat_arrays(loggers) if loggers else pa.array([], pa.large_string()),
        "shipment_id": pa.concat_arrays(shipments)
        if shipments
        else pa.array([], pa.large_string()),
        "observed_at": pa.concat_arrays(times)
        if times
        else pa.array([], pa.timestamp("us", tz="UTC")),
        "celsius": pa.concat_arrays(values) if values else pa.array([], pa.float64()),
        "_feed": pa.array(["sandbox"] * n, pa.large_string()),
        "_run_id": pa.array(["sandbox"] * n, pa.large_string()),
        "_source_ref": pa.array([f"{source}#row={i}" for i in range(1, n + 1)], pa.large_string()),
    }
    return pa.table([columns[f.name].cast(f.type) for f in schema], schema=schema)


def master_tables(
    builder: ProgramBuilder, catalog: Mapping[str, ProductCatalogEntry]
) -> dict[str, pa.Table]:
    """Sites (with their GS1 identifiers), products and reagent lots of the program."""
    sites = [
        {**s.to_record().model_dump(), "sgln": s.sgln, "pgln": s.pgln, **_lineage("master.site", n)}
        for n, s in enumerate(SITES, 1)
    ]
    return {
        "master.site": rows_to_table(sites, load_contract("master.site")),
        "master.product": _table("master.product", (e.product for _, e in sorted(catalog.items()))),
        "master.reagent_lot": _table("master.reagent_lot", (lot.record for lot in builder.lots)),
    }


def all_tables(builder: ProgramBuilder, journeys: list[Journey]) -> dict[str, pa.Table]:
    """Every canonical dataset of the program (DATASETS), as a correct ingest would stage it."""
    return {
        **canonical_tables(builder, journeys),
        **logistics_tables(journeys),
        **master_tables(builder, load_product_catalog()),
    }
