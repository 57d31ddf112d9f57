"""Quarantined records: list them, and replay a run's through the feed's current mapping.

A data engineer fixes the cause of a quarantine (a mapping, a vault enrollment) and replays::

    runs = list_quarantine(lake, feed="cmo-acme-batches")          # per feed and run, by code
    result = replay_quarantine(settings, feed="cmo-acme-batches", run_id="scheduled__...")

Replay reads the run's quarantine file (``quarantine/<feed>/date=<day>/run=<run>/``), takes
each record back from the raw payload its line references (``source_sha256`` +
``source_locator``) and stages those records with the feed's pipeline code — the mapping and
contract in force now — under a new run ``replay-<run>-<n>``, in the original run's day
partition. Records that pass are staged; those that still fail are quarantined again, with
their reasons, under the replay run. The replay writes its own ledger
(``runs/replay-<run>-<n>/replay.<feed>.json``; received = valid + quarantined), last.

Idempotence: replays of one run form a chain. Replay ``n + 1`` reads the quarantine of
replay ``n`` (the records still failing), never the original again, so a record staged by a
replay is not staged twice; when replay ``n`` left nothing quarantined there is nothing to do.
A replay that stopped before its ledger was written is redone under the same run ID, and its
parts (named by the payloads' SHA-256) are rewritten, not added.

Supported: CMO feeds (files kept as received under ``raw/<cmo feed>/``, verified and
decrypted again before use, read by :mod:`cmohub.pipelines.cmo`'s own staging); the courier
API feeds ``logistics-courier-shipments`` / ``-legs`` (pages kept under ``raw/courier/``,
mapped by :class:`cmohub.pipelines.logistics.FeedBatch`); the EPCIS feeds
``logistics-epcis-custody`` / ``-sensor`` (query pages kept under ``raw/epcis/``) and the
logger files of ``logistics-logger-csv`` (``raw/logger_csv/``), re-entered through the
logistics pipeline's own :func:`~cmohub.pipelines.logistics.stage_epcis_payload` and
:func:`~cmohub.pipelines.logistics.stage_logger_file` with a
:class:`~cmohub.pipelines.selection.RecordSelection` of the quarantined locators, so that
only those records are staged, quarantined again or reported missing.

EPCIS state: the sync remembers the key of every event it staged *or quarantined*
(``state/logistics-epcis-custody/seen.parquet``) and suppresses it as a duplicate when it
comes again. A replayed event's key is there because the replayed run quarantined it, so a
replay does not consult the seen keys for the events it selected (the chain above already
stages a quarantined record at most once, and later syncs suppress the event as before); it
adds nothing to them. A page the run could not read at all (``document``) left no key: its
replay is staged like an ingest — events recorded since are duplicates, and its keys and
error declarations are recorded — and is refused (REPLAY_UNSUPPORTED) when the page now
holds sensor reports, which only a re-sync can stage (a redo of such a replay, interrupted
after it recorded the keys, counts its events as duplicates: the part it wrote stays, once).
Retractions from error declarations
are applied when staged data is loaded, to replayed events as to any other. An EPCIS replay
holds the EPCIS sync's run lock.

Clinical: the FHIR and HL7 v2 mapping feeds (``clinical-fhir-*``, ``clinical-hl7-*``).
Their records reference a batch manifest (``raw/clinical-batch/``) and ``input=<n>/...``
locators; the payloads are kept only encrypted (:mod:`cmohub.sources.raw_clinical`) and are
decrypted again, in memory, by :func:`cmohub.pipelines.clinical.restage_quarantined`, which
runs the clinical intake itself with a :class:`~cmohub.pipelines.clinical.Reentry` of the
quarantined locators (its module doc says what happens to the patient index, the message
routing and the duplicate registry). A record another run staged since (an HL7 message
re-sent) is counted a duplicate: received = valid + quarantined + duplicates. Every payload
of the batch must still be kept (a FHIR record's Patient may be in any of them):
RAW_NOT_KEPT otherwise, and always with ``CMOHUB_RAW_CLINICAL=none``. A clinical replay
tokenizes through the vault the settings name (or the :class:`~cmohub.vault.Vault` passed).

Refused with REPLAY_UNSUPPORTED: the clinical intake feeds ``clinical-fhir`` (resources no
mapping takes, unreadable payloads) and ``clinical-hl7`` (messages no mapping takes, ADT
events the vault refused: a replay does not change the vault's identities), the enrollment
register, and master data (not kept in ``raw/``: every nightly re-reads the whole master-data
folder as its first task, so a corrected file is staged by the next nightly or a rerun).

Nothing here prints or writes a value of a classified field: results carry counts, codes,
run IDs, payload hashes, locators and lake paths.

Error codes: QUARANTINE_NOT_FOUND, REPLAY_UNSUPPORTED, REPLAY_SOURCE_INVALID (ConfigError),
RAW_NOT_KEPT (ConfigError), and those of the feed's pipeline (CRYPTO_*, VAULT_*).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from cmohub.contracts.report import QuarantineEntry, Reason, SourceRef
from cmohub.errors import ConfigError, ParseError
from cmohub.identity import IdentityPort
from cmohub.lake import Lake, RawRef
from cmohub.mapping.readers import SourceRecord, read_records
from cmohub.pipelines.context import RunContext, safe_run_id, utc_now
from cmohub.pipelines.ledger import RunLedger
from cmohub.pipelines.locks import run_lock
from cmohub.pipelines.selection import RecordSelection, record_and_message
from cmohub.pipelines.snapshot import (
    REPLAY_DAG,
    REPLAY_RUN,
    latest_replay,
    replay_chain,
    replay_ledger_name,
)
from cmohub.pipelines.stage import FeedStager, StageResult
from cmohub.settings import RawClinicalPolicy, Settings
from cmohub.sources.delivery import CmoFeed, load_cmo_feeds

if TYPE_CHECKING:
    from cmohub.pipelines.logistics import FeedBatch

#: A record a replay could not find in its payload any more (the reader changed its locators).
RECORD_NOT_FOUND = "REPLAY_RECORD_NOT_FOUND"
_QUARANTINE_FILE = re.compile(
    r"^quarantine/(?P<feed>[^/]+)/date=(?P<day>\d{4}-\d{2}-\d{2})/run=(?P<run>[^/]+)/records\.jsonl$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Logistics feeds a replay serves: mapped row by row from the courier API pages kept raw.
COURIER_FEEDS = frozenset({"logistics-courier-shipments", "logistics-courier-legs"})
COURIER_RAW = "courier"
#: Logistics feeds staged by the pipeline's own event and column code, from EPCIS query pages
#: (one page holds records of both feeds) and logger CSV exports kept raw.
EPCIS_FEEDS = frozenset({"logistics-epcis-custody", "logistics-epcis-sensor"})
EPCIS_RAW = "epcis"
LOGGER_FEEDS = frozenset({"logistics-logger-csv"})
LOGGER_RAW = "logger_csv"
#: Where the payloads of each replayable logistics feed are kept (``raw/<kind>/``).
LOGISTICS_RAW = {
    **dict.fromkeys(COURIER_FEEDS, COURIER_RAW),
    **dict.fromkeys(EPCIS_FEEDS, EPCIS_RAW),
    **dict.fromkeys(LOGGER_FEEDS, LOGGER_RAW),
}


# --- list ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuarantineRun:
    """One feed's quarantine file of one run: how many records, by (first) reason code."""

    feed: str
    day: date
    run_id: str
    path: str  # lake-relative
    records: int
    codes: dict[str, int]
    current: bool = True  # False once a finished replay re-read these records

    @property
    def replay_of(self) -> str | None:
        """The run this one replayed (None for an ingest run)."""
        root, step = replay_chain(self.run_id)
        return root if step else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "date": self.day.isoformat(),
            "run_id": self.run_id,
            "replay_of": self.replay_of,
            "path": self.path,
            "records": self.records,
            "codes": dict(sorted(self.codes.items())),
            "current": self.current,
        }


def read_quarantine_file(lake: Lake, relative: str) -> list[dict[str, Any]]:
    """The lines of one quarantine file (JSON Lines)."""
    text = lake.path(relative).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def list_quarantine(
    lake: Lake, *, feed: str | None = None, since: date | None = None
) -> list[QuarantineRun]:
    """Every quarantine file (of ``feed``; of days from ``since``), by feed, day and run."""
    base = f"quarantine/{feed}" if feed else "quarantine"
    found: list[QuarantineRun] = []
    for path in lake.iter_files(base, "**/records.jsonl"):
        relative = str(path.relative_to(lake.root))
        match = _QUARANTINE_FILE.fullmatch(relative)
        if match is None:
            continue
        day = date.fromisoformat(match.group("day"))
        if since is not None and day < since:
            continue
        codes: dict[str, int] = {}
        lines = read_quarantine_file(lake, relative)
        for line in lines:
            code = str(line.get("code") or "INPUT_INVALID")
            codes[code] = codes.get(code, 0) + 1
        name, run = match.group("feed"), match.group("run")
        root, step = replay_chain(run)
        current = step == latest_replay(lake, name, root)
        found.append(QuarantineRun(name, day, run, relative, len(lines), codes, current))
    return sorted(found, key=_chain_order)


def _chain_order(run: QuarantineRun) -> tuple[str, date, str, int]:
    """A run, then its replays in order."""
    root, step = replay_chain(run.run_id)
    return run.feed, run.day, root, step


# --- replay: which run, under which ID ------------------------------------------------------------


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay reads and where it writes."""

    feed: str
    root_run: str  # the ingest run whose records are replayed
    day: date
    source_run: str  # the run whose quarantine is read: the root, or the latest replay
    source: str | None  # its quarantine file (None: the latest replay left nothing)
    run_id: str  # the replay's run ID


def _quarantine_of(lake: Lake, feed: str, run_id: str) -> tuple[date, str] | None:
    """The day and lake path of ``feed``'s quarantine file of ``run_id``, when there is one."""
    for path in lake.iter_files(f"quarantine/{feed}", f"date=*/run={run_id}/records.jsonl"):
        relative = str(path.relative_to(lake.root))
        match = _QUARANTINE_FILE.fullmatch(relative)
        if match is not None:
            return date.fromisoformat(match.group("day")), relative
    return None


def plan_replay(lake: Lake, *, feed: str, run_id: str) -> ReplayPlan:
    """Find the run's quarantine and the next replay's run ID (see the chain in the module doc)."""
    match = REPLAY_RUN.fullmatch(run_id)
    root = safe_run_id(match.group("root") if match else run_id)
    original = _quarantine_of(lake, feed, root)
    if original is None:
        raise ConfigError(
            f"feed {feed} has no quarantined records in run {root}: "
            f"see 'cmohub quarantine list --feed {feed}'",
            code="QUARANTINE_NOT_FOUND",
            where=f"quarantine/{feed}",
        )
    day, path = original
    done = latest_replay(lake, feed, root)
    if done == 0:
        return ReplayPlan(feed, root, day, root, path, f"replay-{root}-1")
    latest = f"replay-{root}-{done}"
    remaining = _quarantine_of(lake, feed, latest)
    return ReplayPlan(
        feed, root, day, latest, remaining[1] if remaining else None, f"replay-{root}-{done + 1}"
    )


def _interval(lake: Lake, root: str, day: date) -> tuple[datetime, datetime]:
    """The original run's interval (from any of its ledgers), else its partition day."""
    for path in lake.iter_files(f"runs/{root}", "*.json"):
        data = lake.read_json(path)
        if isinstance(data, dict) and "interval_start" in data and "counts" in data:
            return (
                datetime.fromisoformat(data["interval_start"]),
                datetime.fromisoformat(data["interval_end"]),
            )
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


# --- replay ---------------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What one replay did (small, JSON-ready; counts and paths only)."""

    feed: str
    kind: str
    replay_of: str
    read_from: str  # the run whose quarantine was replayed
    run_id: str | None  # None when nothing was left to replay
    day: date
    received: int = 0
    valid: int = 0
    quarantined: int = 0
    duplicates: int = 0  # records another run staged since (clinical: a message re-sent)
    quarantine_codes: dict[str, int] = field(default_factory=dict)
    payloads: int = 0
    parts: list[str] = field(default_factory=list)
    quarantine: str | None = None
    reports: list[str] = field(default_factory=list)
    ledger: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "kind": self.kind,
            "replay_of": self.replay_of,
            "read_from": self.read_from,
            "run_id": self.run_id,
            "date": self.day.isoformat(),
            "received": self.received,
            "valid": self.valid,
            "quarantined": self.quarantined,
            "duplicates": self.duplicates,
            "quarantine_codes": dict(sorted(self.quarantine_codes.items())),
            "payloads": self.payloads,
            "parts": self.parts,
            "quarantine": self.quarantine,
            "reports": self.reports,
            "ledger": self.ledger,
        }


def feed_kind(feed: str) -> tuple[str, CmoFeed | None]:
    """``("cmo", its CMO feed)``, ``("clinical", None)``, ``("logistics", None)`` or other."""
    for config in load_cmo_feeds().values():
        if any(route.mapping == feed for route in config.routes):
            return "cmo", config
    for kind in ("clinical", "logistics", "master"):
        if feed.startswith(kind):
            return kind, None
    return "unknown", None


def _by_payload(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        sha = line.get("source_sha256")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise ConfigError(
                "a quarantined record names no raw payload (source_sha256): it cannot be replayed",
                code="REPLAY_SOURCE_INVALID",
                where=f"{line.get('source_locator')}",
            )
        grouped.setdefault(sha, []).append(line)
    return grouped


def _entry_key(line: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    key = line.get("key") or {}
    return tuple(sorted(key.items())) if isinstance(key, dict) else ()


def _raw_refs(lake: Lake, kind: str, encrypted: bool, payloads: list[str]) -> dict[str, RawRef]:
    """Where each payload is kept; RAW_NOT_KEPT before anything is opened or written."""
    refs = {}
    for sha in sorted(payloads):
        ref = RawRef(sha, 0, kind, encrypted)
        if not lake.path(ref.relative_path).exists():
            raise ConfigError(
                "the payload these records came from is not kept in the lake: they cannot be "
                "replayed (was the lake moved or raw/ pruned?)",
                code="RAW_NOT_KEPT",
                where=ref.relative_path,
            )
        refs[sha] = ref
    return refs


def _pick(
    records: list[SourceRecord], lines: list[dict[str, Any]], *, dataset: str, feed: str, sha: str
) -> tuple[list[SourceRecord], list[QuarantineEntry]]:
    """The payload's quarantined records, and entries for those it no longer holds."""
    wanted = {str(line.get("source_locator")): line for line in lines}
    if "file" in wanted:  # the whole payload was quarantined: every record of it
        return records, []
    chosen = [r for r in records if r.locator in wanted]
    missing = sorted(set(wanted) - {r.locator for r in chosen})
    return chosen, _not_found(lines, missing, dataset=dataset, feed=feed, sha=sha)


def _not_found(
    lines: list[dict[str, Any]], missing: list[str], *, dataset: str, feed: str, sha: str
) -> list[QuarantineEntry]:
    """Entries for quarantined records (by locator) the payload no longer holds."""
    by_locator = {str(line.get("source_locator")): line for line in lines}
    return [
        QuarantineEntry(
            dataset,
            SourceRef(sha, locator),
            (Reason(RECORD_NOT_FOUND, f"replay:{feed}", None),),
            key=_entry_key(by_locator[locator]),
        )
        for locator in missing
    ]


def _locators(lines: list[dict[str, Any]]) -> list[str]:
    return [str(line.get("source_locator")) for line in lines]


@dataclass(frozen=True)
class _Replay:
    """What a replayer works from: the replay run, the feed, its quarantine lines by payload,
    where those payloads are kept, the vault and the replay's ledger."""

    context: RunContext
    feed: str
    grouped: dict[str, list[dict[str, Any]]]
    refs: dict[str, RawRef]
    port: IdentityPort
    ledger: RunLedger

    def payloads(self) -> Iterator[tuple[str, RawRef, list[dict[str, Any]]]]:
        """Each kept payload, recorded as an input of the replay, with its quarantine lines."""
        for sha, ref in self.refs.items():
            self.ledger.inputs.append({"sha256": sha, "raw": ref.relative_path})
            yield sha, ref, self.grouped[sha]

    def feed_batch(self) -> FeedBatch:
        from cmohub.pipelines.logistics import FeedBatch  # noqa: PLC0415

        return FeedBatch(FeedStager(self.context, self.feed, port=self.port, ledger=self.ledger))

    def not_found(
        self, lines: list[dict[str, Any]], missing: list[str], dataset: str, sha: str
    ) -> list[QuarantineEntry]:
        return _not_found(lines, missing, dataset=dataset, feed=self.feed, sha=sha)


def _replay_cmo(job: _Replay, config: CmoFeed) -> StageResult:
    """Re-stage a CMO mapping's quarantined records from the files kept in ``raw/``."""
    from cmohub.pipelines.cmo import FileStaging, keys_for, open_raw, read_file  # noqa: PLC0415

    context, feed = job.context, job.feed
    keys = keys_for(config, context)
    staging = FileStaging(context, job.port, job.ledger)
    dataset = staging.batch(feed).compiled.spec.dataset
    for sha, ref, lines in job.payloads():
        plaintext = open_raw(context, config, ref, keys)
        records = read_file(staging, feed, sha, plaintext)
        del plaintext
        if records is None:  # still unreadable: quarantined whole again (PARSE_*)
            continue
        chosen, lost = _pick(records, lines, dataset=dataset, feed=feed, sha=sha)
        for entry in lost:
            staging.reject_file(feed, sha, entry)
        staging.add(feed, sha, chosen)
    [result] = staging.finish()
    return result


def _replay_courier(job: _Replay) -> StageResult:
    """Re-stage courier shipments or legs from the API pages kept in ``raw/courier/``."""
    batch = job.feed_batch()
    spec = batch.stager.compiled.spec
    for sha, ref, lines in job.payloads():
        records = list(read_records(spec.source, job.context.lake.get_raw(ref)))
        chosen, lost = _pick(records, lines, dataset=batch.dataset, feed=job.feed, sha=sha)
        batch.upstream.extend(lost)
        batch.add_records(sha, chosen)
    batch.stage()
    return batch.stager.finish()


def _replay_epcis(job: _Replay) -> StageResult:
    """Re-stage custody events or sensor readings from the EPCIS pages kept in ``raw/epcis/``.

    Through :func:`~cmohub.pipelines.logistics.stage_epcis_payload`, limited to the records
    quarantined. Their event keys are in the feed's seen keys (the run quarantined them)
    and not treated as duplicates; a page the run could not read at all (``document``) is
    staged like an ingest's, against the seen keys and recording its own. The EPCIS sync's
    lock is held: both write that state.
    """
    from cmohub.pipelines.logistics import (  # noqa: PLC0415
        EPCIS_LOCK,
        FEED_CUSTODY,
        EpcisSelection,
        open_epcis_staging,
        stage_epcis_payload,
    )

    context, feed, lake = job.context, job.feed, job.context.lake
    _refuse_sensor_pages(lake, feed, job.refs, job.grouped)
    with run_lock(context.settings.home_dir, EPCIS_LOCK):
        staging = open_epcis_staging(context, job.port, job.ledger, feeds=[feed])
        batch = staging.custody if feed == FEED_CUSTODY else staging.sensor
        for sha, ref, lines in job.payloads():
            wanted = RecordSelection.of(_locators(lines))
            other = RecordSelection.of(())
            select = (
                EpcisSelection(custody=wanted, sensor=other)
                if feed == FEED_CUSTODY
                else EpcisSelection(custody=other, sensor=wanted)
            )
            stage_epcis_payload(lake.get_raw(ref), sha, staging, select=select)
            batch.upstream.extend(job.not_found(lines, wanted.missing(), batch.dataset, sha))
        batch.stage()
        result = batch.stager.finish()
        staging.save_state()
    return result


def _refuse_sensor_pages(
    lake: Lake, feed: str, refs: dict[str, RawRef], grouped: dict[str, list[dict[str, Any]]]
) -> None:
    """Refuse, before anything is written, a page quarantined whole that reads now and holds
    sensor events: the custody feed counted it, but its readings belong to the sensor feed,
    whose replay chain never received them."""
    from cmohub.formats.epcis import parse_epcis_document  # noqa: PLC0415

    for sha, lines in sorted(grouped.items()):
        if "document" not in _locators(lines):
            continue
        try:
            document = parse_epcis_document(lake.get_raw(refs[sha]))
        except ParseError:
            continue  # still unreadable: quarantined whole again
        if any(event.is_sensor_event for event in document.events):
            raise ConfigError(
                f"an EPCIS page that {feed} quarantined whole can be read now and holds "
                "sensor reports, which the sensor feed never received: re-ingest its window "
                "with 'cmohub logistics sync --since' instead",
                code="REPLAY_UNSUPPORTED",
                where=f"{sha}#document",
            )


def _replay_loggers(job: _Replay) -> StageResult:
    """Re-stage logger readings from the CSV exports kept in ``raw/logger_csv/``, through
    :func:`~cmohub.pipelines.logistics.stage_logger_file`, limited to the rows quarantined."""
    from cmohub.pipelines.logistics import stage_logger_file  # noqa: PLC0415

    context = job.context
    batch = job.feed_batch()
    for sha, ref, lines in job.payloads():
        wanted = RecordSelection.of(_locators(lines))
        stage_logger_file(context.lake.get_raw(ref), sha, batch, context.path_run_id, select=wanted)
        batch.upstream.extend(job.not_found(lines, wanted.missing(), batch.dataset, sha))
    batch.stage()
    return batch.stager.finish()


#: How each kind of kept logistics payload is replayed.
_LOGISTICS_REPLAYERS = {
    COURIER_RAW: _replay_courier,
    EPCIS_RAW: _replay_epcis,
    LOGGER_RAW: _replay_loggers,
}


#: Clinical feeds whose records no mapping took: replaying them means routing them to a feed.
CLINICAL_INTAKE_FEEDS = {
    "clinical-fhir": "its records are resources no clinical mapping takes (or payloads that "
    "could not be read at all); once a mapping takes them, re-ingest the payloads "
    "('cmohub clinical ingest')",
    "clinical-hl7": "its records are messages no clinical mapping takes, ADT updates and "
    "merges the vault refused, or files that could not be split; ADT events change the vault "
    "and are not re-applied by a replay: re-send them",
    "clinical-enrollments": "the enrollment register is imported whole: import it again "
    "('cmohub clinical sync')",
}


def _check_clinical_kept(context: RunContext, feed: str, grouped: dict[str, Any]) -> dict[str, Any]:
    """Refuse the intake feeds; check, before the vault is opened, that the payloads were
    kept (RAW_NOT_KEPT) and that the quarantine names one batch (one staging step), whose
    manifest is returned."""
    from cmohub.sources.raw_clinical import (  # noqa: PLC0415
        BATCH_KIND,
        RAW_KIND,
        load_batch_manifest,
    )

    if feed in CLINICAL_INTAKE_FEEDS:
        raise ConfigError(
            f"{feed} cannot be replayed: {CLINICAL_INTAKE_FEEDS[feed]}",
            code="REPLAY_UNSUPPORTED",
            where=feed,
        )
    lake = context.lake
    hint = (
        " (CMOHUB_RAW_CLINICAL=none)"
        if context.settings.raw_clinical is RawClinicalPolicy.NONE
        else ""
    )
    manifests: dict[str, dict[str, Any]] = {}
    for manifest_sha in sorted(grouped):
        kept = lake.path(RawRef(manifest_sha, 0, BATCH_KIND, False).relative_path).exists()
        if kept:
            manifests[manifest_sha] = load_batch_manifest(lake, manifest_sha)
        inputs = manifests[manifest_sha]["inputs"] if kept else [None]
        # Every payload of the batch: a FHIR record's subject may be in any of them.
        for number, item in enumerate(inputs, start=1):
            sha = item["sha256"] if item else None
            if sha is None or not lake.path(RawRef(sha, 0, RAW_KIND, True).relative_path).exists():
                raise ConfigError(
                    f"the clinical payloads of this run were not kept{hint}: its quarantined "
                    "records cannot be replayed",
                    code="RAW_NOT_KEPT",
                    where=f"{manifest_sha}#input={number}",
                )
    if len(grouped) > 1:
        raise ConfigError(
            f"the quarantine of {feed} names {len(grouped)} clinical batches where a run "
            "stages one: it cannot be replayed as one run",
            code="REPLAY_SOURCE_INVALID",
            where=feed,
        )
    [manifest] = manifests.values()
    return manifest


def _replay_clinical(
    context: RunContext,
    feed: str,
    grouped: dict[str, list[dict[str, Any]]],
    manifest: dict[str, Any],
    *,
    root: str,
    vault: IdentityPort | None,
    ledger: RunLedger,
) -> StageResult:
    """Re-stage FHIR or HL7 records through the clinical intake, from the encrypted batch.

    Through :func:`~cmohub.pipelines.clinical.restage_quarantined` with a
    :class:`~cmohub.pipelines.clinical.Reentry` of the quarantined locators; duplicate keys
    are claimed for the root run (see the clinical module's "Quarantine replay").
    """
    from cmohub.pipelines.clinical import Reentry, restage_quarantined  # noqa: PLC0415
    from cmohub.vault import Vault  # noqa: PLC0415

    if vault is not None and not isinstance(vault, Vault):
        raise ConfigError(
            "a clinical replay tokenizes through the vault itself (linkage checks): pass "
            "the Vault, or none to open the one the settings name",
            code="REPLAY_UNSUPPORTED",
            where=feed,
        )
    [(manifest_sha, lines)] = grouped.items()

    def not_found(dataset: str, missing: list[str]) -> list[QuarantineEntry]:
        return _not_found(lines, missing, dataset=dataset, feed=feed, sha=manifest_sha)

    select = RecordSelection.of(_locators(lines), record_and_message)
    reentry = Reentry(feed, manifest_sha, manifest, select, root, not_found)
    return restage_quarantined(context, reentry, ledger=ledger, vault=vault)


@contextmanager
def _identity(settings: Settings, port: IdentityPort | None) -> Iterator[IdentityPort]:
    """``port``, or the vault the settings name (opened here, closed after)."""
    if port is not None:
        yield port
        return
    from cmohub.vault import open_vault  # noqa: PLC0415 - only when there is work

    vault = open_vault(settings)
    try:
        yield vault
    finally:
        vault.close()


def replay_quarantine(
    settings: Settings,
    *,
    feed: str,
    run_id: str,
    port: IdentityPort | None = None,
    as_of: datetime | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> ReplayResult:
    """Replay ``feed``'s quarantined records of ``run_id`` (see the module doc).

    ``as_of`` replaces the original run's interval end (what time-dependent contract rules
    are evaluated at); ``port`` is the vault (opened from the settings when None).
    """
    lake = Lake(settings.lake_root)
    with run_lock(settings.home_dir, f"replay:{feed}"):
        plan = plan_replay(lake, feed=feed, run_id=run_id)
        kind, config = feed_kind(feed)
        start, end = _interval(lake, plan.root_run, plan.day)
        context = RunContext(
            dag_id=REPLAY_DAG,
            run_id=plan.run_id,
            interval_start=start,
            interval_end=as_of or end,
            settings=settings,
            clock=clock,
        )
        result = ReplayResult(feed, kind, plan.root_run, plan.source_run, None, plan.day)
        if plan.source is None:
            return result  # the latest replay staged everything: nothing left
        grouped = _by_payload(read_quarantine_file(lake, plan.source))
        refs: dict[str, RawRef] = {}
        manifest: dict[str, Any] = {}
        if kind == "clinical":
            manifest = _check_clinical_kept(context, feed, grouped)
        elif config is None and feed not in LOGISTICS_RAW:
            why = (
                "master data is re-read in full from the master-data folder "
                "(CMOHUB_MASTER_DIR) by every nightly reconciliation, as its first task; "
                "correct the file or the mapping, and the next nightly (or a rerun of its "
                "interval) stages it"
                if kind == "master"
                else "not supported yet"
            )
            raise ConfigError(
                f"{feed} is not replayed: {why}. Replay serves CMO feeds, the clinical FHIR "
                f"and HL7 mapping feeds and {', '.join(sorted(LOGISTICS_RAW))}",
                code="REPLAY_UNSUPPORTED",
                where=feed,
            )
        else:
            refs = _raw_refs(  # before the vault is opened
                lake,
                config.name if config else LOGISTICS_RAW[feed],
                config.options.encrypted if config else False,
                list(grouped),
            )
        ledger = RunLedger(task=replay_ledger_name(feed))
        ledger.inputs.append({"replay_of": plan.root_run, "quarantine": plan.source})
        if kind == "clinical":  # opens the vault itself, with the clinical intake
            staged = _replay_clinical(
                context, feed, grouped, manifest, root=plan.root_run, vault=port, ledger=ledger
            )
        else:
            with _identity(settings, port) as identity:
                job = _Replay(context, feed, grouped, refs, identity, ledger)
                if config is not None:
                    staged = _replay_cmo(job, config)
                else:
                    staged = _LOGISTICS_REPLAYERS[LOGISTICS_RAW[feed]](job)
        result.ledger = ledger.save(context)  # last: it marks the replay done
    return _finish(result, plan, staged, ledger, len(grouped))


def _finish(
    result: ReplayResult, plan: ReplayPlan, staged: StageResult, ledger: RunLedger, payloads: int
) -> ReplayResult:
    counts = staged.counts
    result.run_id = plan.run_id
    result.received, result.valid, result.quarantined, result.duplicates = (
        counts.received,
        counts.valid,
        counts.quarantined,
        counts.duplicates,
    )
    result.quarantine_codes = dict(ledger.quarantine_codes)
    result.payloads = payloads
    result.parts, result.quarantine, result.reports = (
        staged.parts,
        staged.quarantine,
        staged.reports,
    )
    return result
