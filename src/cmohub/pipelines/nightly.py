"""The nightly reconciliation: one joined, checked view of every patient journey, published.

Two tasks of the ``nightly_reconciliation`` DAG:

:func:`reconcile` reads every canonical dataset as staged up to the interval's end (later
deliveries are ignored, so a rerun reads the same inputs), runs the table rules
(:mod:`cmohub.reconcile.rules`), the cold-chain rules (:mod:`cmohub.coldchain`) and the ingest
findings (quarantine, duplicate files), and builds the published datasets ``exceptions``,
``coi_journey``, ``excursions`` and ``feed_scorecard``. They go to ``runs/<run>/nightly/``.

:func:`publish` validates the published datasets and the canonical tables against their
contracts (an error-severity failure stops the release), renders the HTML report and one
decision packet per excursion, encrypts each CMO's own records to that CMO, and writes the
release — Parquet, report, deliveries, ``manifest.json`` with the vault's audit checkpoint, and
its detached signature by the sponsor key — atomically to ``published/<as-of date>/``.

Determinism: the release is named by the interval's end date; every file, the manifest and
the signature (made at a fixed time: the later of the interval end and the key's creation)
are the same bytes when the same interval is re-run over the same inputs — except the
per-recipient deliveries, which OpenPGP encrypts under fresh session keys by design (their
plaintext is the same). The audit checkpoint a release embeds is recorded on first
publication and re-used by reruns of that interval.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cmohub import __version__
from cmohub.coldchain import build_custody_ledger, detect_excursions, detect_logger_gaps
from cmohub.contracts.store import load_contract, load_product_catalog
from cmohub.contracts.validate import validate_table
from cmohub.domain import DATASETS
from cmohub.errors import PublishError
from cmohub.lake import Lake, parquet_bytes
from cmohub.log import get_logger
from cmohub.mapping.store import load_mappings
from cmohub.pipelines.context import RunContext, safe_run_id
from cmohub.pipelines.locks import run_lock
from cmohub.pipelines.logistics import LogisticsTables, Retractions, packet_name
from cmohub.pipelines.snapshot import (
    REPLAY_DAG,
    Snapshot,
    load_dataset,
    load_ledgers,
    load_quarantine,
)
from cmohub.publish.packets import packet_data, render_html
from cmohub.publish.release import Recipient, ReleaseFile, Signer, write_release
from cmohub.publish.report import render_report
from cmohub.publish.signing import cmo_recipients, hub_signer
from cmohub.reconcile.catalog import RULES, RuleCode
from cmohub.reconcile.datasets import (
    FeedActivity,
    coi_journey_table,
    exceptions_table,
    feed_scorecard_table,
)
from cmohub.reconcile.findings import (
    custody_findings,
    duplicate_file_findings,
    excursion_findings,
    logger_gap_findings,
    quarantine_findings,
    shipment_cois,
)
from cmohub.reconcile.rules import RuleFinding, evaluate_table_rules, specification_table
from cmohub.sources.registry import FileRegistry
from cmohub.vault import open_vault

log = get_logger(__name__)

CANONICAL = tuple(DATASETS)
PUBLISHED = ("exceptions", "coi_journey", "excursions", "feed_scorecard")
NIGHTLY_DIR = "nightly"
#: Canonical datasets a CMO receives, filtered to its own batches (or its own FIN).
CMO_DATASETS = {
    "manufacturing.batch": "batch_id",
    "manufacturing.batch_step": "batch_id",
    "manufacturing.material_consumption": "batch_id",
    "manufacturing.deviation": "batch_id",
    "quality.qc_result": "batch_id",
    "quality.release_decision": "batch_id",
    "manufacturing.environmental_monitoring": "cmo",
}


def as_of(context: RunContext) -> datetime:
    """The instant the run reconciles up to: the end of its data interval (UTC)."""
    return context.interval_end.astimezone(UTC)


def release_name(context: RunContext) -> str:
    return as_of(context).date().isoformat()


def _up_to(context: RunContext) -> date:
    return as_of(context).date()


@dataclass
class NightlyInputs:
    tables: dict[str, pa.Table]
    snapshots: dict[str, Snapshot]
    logistics: LogisticsTables


def load_inputs(context: RunContext) -> NightlyInputs:
    """Every canonical dataset as of the interval's end; retracted custody events left out."""
    lake = context.lake
    tables: dict[str, pa.Table] = {}
    snapshots: dict[str, Snapshot] = {}
    for dataset in CANONICAL:
        tables[dataset], snapshots[dataset] = load_dataset(
            lake, load_contract(dataset), up_to=_up_to(context)
        )
    retracted = Retractions(lake).keys
    custody = tables["logistics.custody_event"]
    if retracted and custody.num_rows:
        custody = custody.filter(
            pc.invert(pc.is_in(custody["event_id"], value_set=pa.array(sorted(retracted))))
        )
        tables["logistics.custody_event"] = custody
    logistics = LogisticsTables(
        shipments=tables["logistics.shipment"],
        legs=tables["logistics.shipment_leg"],
        custody=custody,
        readings=tables["logistics.temperature_reading"],
        sites=tables["master.site"],
    )
    return NightlyInputs(tables, snapshots, logistics)


def _ingest_run_days(lake: Lake) -> dict[str, date]:
    """Each ingest run's partition day (the UTC day its interval starts), from its ledger."""
    days: dict[str, date] = {}
    for ledger in load_ledgers(lake):
        start = datetime.fromisoformat(ledger["interval_start"]).astimezone(UTC).date()
        days[str(ledger["run_id"])] = start
    return days


def _registry(context: RunContext) -> FileRegistry | None:
    path = context.settings.hub_database_url
    if path.startswith("sqlite:///") and not Path(path.removeprefix("sqlite:///")).exists():
        return None  # nothing was ever registered
    return FileRegistry.from_url(path)


def ingest_findings(context: RunContext) -> list[RuleFinding]:
    """Quarantined records and re-delivered files of ingest runs up to the interval's end."""
    lake = context.lake
    registry = _registry(context)
    names = registry.file_names() if registry else {}
    findings = quarantine_findings(load_quarantine(lake, up_to=_up_to(context)), names)
    if registry is not None:
        # Only deliveries made by ingest runs of this interval or earlier (reruns stay stable).
        days = _ingest_run_days(lake)
        up_to = _up_to(context)
        sightings = [
            s
            for s in registry.all_sightings()
            if days.get(safe_run_id(str(s["run_id"])), days.get(str(s["run_id"]), up_to)) <= up_to
        ]
        findings.extend(duplicate_file_findings(sightings))
    return findings


def scorecard_activity(lake: Lake, up_to: date) -> list[FeedActivity]:
    """What each feed received, from the ledgers of runs whose interval starts by ``up_to``."""
    activity: list[FeedActivity] = []
    for ledger in load_ledgers(lake):
        start = datetime.fromisoformat(ledger["interval_start"]).astimezone(UTC).date()
        if start > up_to:
            continue
        stale = {
            str(f.get("feed") or "")
            for f in ledger.get("findings", [])
            if f.get("code") == "FEED_STALE"
        }
        for feed, counts in ledger.get("counts", {}).items():
            if ledger.get("dag_id") == REPLAY_DAG:
                # A replay received nothing new: it re-read records already counted as
                # quarantined, and those it staged move from quarantined to valid.
                received = int(counts.get("received", 0))
                activity.append(
                    FeedActivity(
                        feed,
                        valid=int(counts.get("valid", 0)),
                        quarantined=int(counts.get("quarantined", 0)) - received,
                        duplicates=int(counts.get("duplicates", 0)),
                    )
                )
                continue
            deliveries = int(counts.get("files") or 0) or (1 if counts.get("received") else 0)
            activity.append(
                FeedActivity(
                    feed,
                    deliveries=deliveries,
                    deliveries_on_time=0 if feed in stale else deliveries,
                    received=int(counts.get("received", 0)),
                    valid=int(counts.get("valid", 0)),
                    quarantined=int(counts.get("quarantined", 0)),
                    duplicates=int(counts.get("duplicates", 0)),
                )
            )
    return activity


@dataclass
class Reconciliation:
    """What :func:`reconcile_inputs` computed (pure over the inputs)."""

    findings: list[RuleFinding]
    datasets: dict[str, pa.Table]
    excursion_report: Any
    custody_ledger: Any
    directory: Any
    counts_by_rule: dict[str, int] = field(default_factory=dict)


def reconcile_inputs(
    inputs: NightlyInputs,
    extra: Sequence[RuleFinding],
    *,
    at: datetime,
    feeds: Sequence[str],
    activity: Sequence[FeedActivity],
) -> Reconciliation:
    """Every rule over the inputs, and the published datasets built from the findings."""
    catalog = load_product_catalog()
    products = {code: entry.product for code, entry in catalog.items()}
    t = inputs.tables
    lg = inputs.logistics
    findings = evaluate_table_rules(t, catalog)
    excursions = detect_excursions(lg.readings, lg.legs, lg.shipments, products, as_of=at)
    gaps = detect_logger_gaps(lg.readings, lg.legs, as_of=at)
    directory = lg.directory()
    ledger = (
        build_custody_ledger(lg.custody, lg.shipments, lg.legs, directory) if directory else None
    )
    findings += excursion_findings(excursions)
    findings += logger_gap_findings(gaps, shipment_cois(lg.shipments))
    if ledger is not None:
        findings += custody_findings(ledger)
    findings += list(extra)
    exceptions = exceptions_table(findings, as_of=at)
    datasets = {
        "exceptions": exceptions,
        "coi_journey": coi_journey_table(t, exceptions),
        "excursions": excursions.episodes,
        "feed_scorecard": feed_scorecard_table(feeds, activity),
    }
    counts: dict[str, int] = {}
    for code in exceptions.column("rule_code").to_pylist():
        counts[code] = counts.get(code, 0) + 1
    return Reconciliation(
        findings, datasets, excursions, ledger, directory, dict(sorted(counts.items()))
    )


def reconcile(context: RunContext) -> dict[str, Any]:
    """Task 1: compute the interval's exceptions and published datasets into the run folder."""
    lake = context.lake
    with run_lock(context.settings.home_dir, f"nightly:{release_name(context)}"):
        inputs = load_inputs(context)
        result = reconcile_inputs(
            inputs,
            ingest_findings(context),
            at=as_of(context),
            feeds=sorted(load_mappings()),
            activity=scorecard_activity(lake, _up_to(context)),
        )
        folder = lake.run_dir(context.path_run_id) / NIGHTLY_DIR
        outputs = {}
        for name, table in result.datasets.items():
            lake.write_parquet(folder / f"{name}.parquet", table)
            outputs[name] = table.num_rows
        summary = {
            "release": release_name(context),
            "as_of": as_of(context).isoformat(),
            "inputs": {ds: s.to_dict() for ds, s in sorted(inputs.snapshots.items())},
            "rows": outputs,
            "exceptions_by_rule": result.counts_by_rule,
        }
        lake.write_json(folder / "summary.json", summary)
    log.info(
        "reconciled %s: %d exceptions",
        release_name(context),
        outputs["exceptions"],
        extra={"run_id": context.run_id},
    )
    return {
        "release": summary["release"],
        "exceptions": outputs["exceptions"],
        "exceptions_by_rule": result.counts_by_rule,
        "summary": str((folder / "summary.json").relative_to(lake.root)),
    }


# --- publish ------------------------------------------------------------------------------------


def validation_summary(
    datasets: Mapping[str, pa.Table], *, run_id: str, at: datetime
) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """Validate each dataset against its contract; the summary and the validated tables.

    An error-severity failure of a published dataset stops the release (PUBLISH_INVALID).
    """
    summary: dict[str, Any] = {}
    valid: dict[str, pa.Table] = {}
    for name, table in sorted(datasets.items()):
        contract = load_contract(name)
        outcome = validate_table(table, contract, run_id=run_id, feed=None, as_of=at)
        report = outcome.report
        failed = sorted(
            {c.check_id for c in report.checks if not c.success and c.severity.value == "error"}
        )
        summary[name] = {
            "contract_version": contract.version,
            "received": report.counts.received,
            "valid": report.counts.valid,
            "quarantined": report.counts.quarantined,
            "duplicates": report.counts.duplicates,
            "failed_checks": failed,
        }
        if name in PUBLISHED and report.counts.quarantined:
            raise PublishError(
                f"{name}: {report.counts.quarantined} rows fail their contract "
                f"({', '.join(failed)})",
                code="PUBLISH_INVALID",
                where=name,
            )
        valid[name] = outcome.valid
    return summary, valid


def _checkpoint_for(context: RunContext, name: str) -> dict[str, Any] | None:
    """The audit checkpoint this release embeds: signed at first publication (so it witnesses
    every tokenization of the interval), recorded, and re-used by reruns of the interval."""
    lake = context.lake
    pinned = lake.state_path("nightly", f"checkpoint-{name}")
    if pinned.exists():
        data: dict[str, Any] = lake.read_json(pinned)
        return data
    vault = open_vault(context.settings)
    try:
        checkpoint = vault.checkpoint()
    finally:
        vault.close()
    record = checkpoint.to_dict()
    lake.write_json(pinned, record)
    return record


def _recipient_files(
    recipients: Sequence[Recipient],
    tables: Mapping[str, pa.Table],
    exceptions: pa.Table,
    encrypt: Any,
) -> tuple[list[ReleaseFile], list[dict[str, Any]]]:
    files: list[ReleaseFile] = []
    listing: list[dict[str, Any]] = []
    batches = tables["manufacturing.batch"]
    for recipient in sorted(recipients, key=lambda r: r.name):
        own = batches.filter(pc.equal(batches["cmo"], recipient.fin))
        own_ids = own["batch_id"]
        subsets: dict[str, pa.Table] = {}
        for dataset, column in sorted(CMO_DATASETS.items()):
            table = tables[dataset]
            if column == "cmo":
                subsets[dataset] = table.filter(pc.equal(table["cmo"], recipient.fin))
            else:
                subsets[dataset] = table.filter(pc.is_in(table[column], value_set=own_ids))
        subsets["exceptions"] = exceptions.filter(
            pc.is_in(exceptions["batch_id"], value_set=own_ids)
        )
        names = []
        for dataset, subset in subsets.items():  # the datasets in order, exceptions last
            path = f"deliveries/{recipient.name}/{dataset}.parquet.pgp"
            files.append(
                ReleaseFile(
                    path,
                    encrypt(parquet_bytes(subset), recipient),
                    rows=subset.num_rows,
                    recipient=recipient.name,
                )
            )
            names.append(path)
        listing.append(
            {
                "recipient": recipient.name,
                "fin": recipient.fin,
                "fingerprint": recipient.public_key.fingerprint,
                "files": names,
            }
        )
    return files, listing


def publish(
    context: RunContext,
    *,
    signer: Signer | None = None,
    recipients: Sequence[Recipient] = (),
    encrypt: Any = None,
) -> dict[str, Any]:
    """Task 2: validate, render and write the signed release of the interval."""
    lake = context.lake
    name = release_name(context)
    at = as_of(context)
    folder = lake.run_dir(context.path_run_id) / NIGHTLY_DIR
    if not (folder / "summary.json").exists():
        raise PublishError("reconcile has not run for this run", code="PUBLISH_NO_RECONCILIATION")
    summary = lake.read_json(folder / "summary.json")
    with run_lock(context.settings.home_dir, f"nightly:{name}"):
        published = {n: lake.read_parquet(folder / f"{n}.parquet") for n in PUBLISHED}
        inputs = load_inputs(context)
        validation, valid = validation_summary(
            {**published, **inputs.tables}, run_id=context.path_run_id, at=at
        )
        files: list[ReleaseFile] = []
        for dataset in PUBLISHED:
            table = valid[dataset]
            files.append(
                ReleaseFile(
                    f"datasets/{dataset}.parquet",
                    parquet_bytes(table),
                    rows=table.num_rows,
                    dataset=dataset,
                    contract_version=validation[dataset]["contract_version"],
                )
            )
        for dataset in CANONICAL:
            table = valid[dataset]
            files.append(
                ReleaseFile(
                    f"datasets/canonical/{dataset}.parquet",
                    parquet_bytes(table),
                    rows=table.num_rows,
                    dataset=dataset,
                    contract_version=validation[dataset]["contract_version"],
                )
            )
        # The release specifications in force, so QC can be judged from the release alone.
        catalog = load_product_catalog()
        specs = specification_table(catalog)
        files.append(
            ReleaseFile(
                "datasets/reference/specifications.parquet",
                parquet_bytes(specs),
                rows=specs.num_rows,
            )
        )
        # Decision packets: one per excursion episode.
        products = {code: entry.product for code, entry in catalog.items()}
        lg = inputs.logistics
        report = detect_excursions(lg.readings, lg.legs, lg.shipments, products, as_of=at)
        directory = lg.directory()
        ledger = (
            build_custody_ledger(lg.custody, lg.shipments, lg.legs, directory)
            if directory
            else None
        )
        packets: dict[str, str] = {}
        charts: dict[str, str] = {}
        for episode in report.episodes.to_pylist():
            packet = packet_name(episode)
            data = packet_data(
                episode, report=report, tables=lg, custody=ledger, directory=directory, as_of=at
            )
            packets[packet] = f"packets/{packet}.html"
            charts[packet] = data.chart_svg
            files.append(ReleaseFile(f"report/packets/{packet}.html", render_html(data).encode()))
        checkpoint = _checkpoint_for(context, name)
        deliveries: list[dict[str, Any]] = []
        if recipients:
            if encrypt is None:
                raise PublishError("recipients given without an encryptor", code="PUBLISH_CONFIG")
            recipient_files, deliveries = _recipient_files(
                recipients, valid, valid["exceptions"], encrypt
            )
            files.extend(recipient_files)
        header = {
            "release": name,
            "interval": {
                "start": context.interval_start.astimezone(UTC).isoformat(),
                "end": at.isoformat(),
            },
            "package_version": __version__,
            "contracts": {ds: v["contract_version"] for ds, v in sorted(validation.items())},
            "mappings": _mapping_hashes(),
            "inputs": summary["inputs"],
            "validation": validation,
            "exceptions_by_rule": summary["exceptions_by_rule"],
            "exceptions_by_severity": _by_severity(summary["exceptions_by_rule"]),
            "audit_checkpoint": checkpoint,
            "signer": {"fingerprint": signer.fingerprint} if signer else None,
            "recipients": deliveries,
        }
        html = render_report(
            release=name, header=header, datasets=valid, packets=packets, excursion_charts=charts
        )
        files.append(ReleaseFile("report/index.html", html.encode()))
        if lake.local_root is None:
            raise PublishError(
                "releases are written to a local lake folder (atomic rename)", code="PUBLISH_CONFIG"
            )
        result = write_release(lake.local_root / "published", name, files, header, signer)
    return {
        "release": name,
        "path": str(result.path),
        "manifest_sha256": result.manifest_sha256,
        "files": result.files,
        "replaced": result.replaced,
        "exceptions": valid["exceptions"].num_rows,
    }


def default_recipients(context: RunContext) -> dict[str, Any]:
    """The CMOs of the hub's CMO feeds whose keys it holds (see publish.signing)."""
    return cmo_recipients(context.settings)


def signed_publish(context: RunContext) -> dict[str, Any]:
    """Task 2 as the DAG runs it: signed by the sponsor key, delivered to every known CMO."""
    signer = hub_signer(context.settings, as_of=as_of(context))
    return publish(context, signer=signer, **default_recipients(context))


def _mapping_hashes() -> dict[str, str]:
    return {name: spec.content_sha256 for name, spec in sorted(load_mappings().items())}


def _by_severity(by_rule: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for code, count in by_rule.items():
        severity = str(RULES[RuleCode(code)].severity)
        out[severity] = out.get(severity, 0) + count
    return dict(sorted(out.items()))


def read_summary(lake: Lake, run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (lake.run_dir(run_id) / NIGHTLY_DIR / "summary.json").read_bytes()
    )
    return data
