"""Logistics sync: custody, shipments and temperature in; excursions, packets and alerts out.

Three pipeline functions, one per task of the ``logistics_sync`` DAG (every 15 minutes):

:func:`sync_epcis`
    ``GET /events`` from the EPCIS repository for [cursor − lookback, interval end): custody
    events are staged as ``logistics.custody_event`` (feed ``logistics-epcis-custody``: the
    generic mapping engine, COIs verified through the vault), sensor reports as
    ``logistics.temperature_reading`` (feed ``logistics-epcis-sensor``: the vectorized path).
:func:`sync_courier`
    the courier API's shipments and legs (``logistics.shipment``, ``logistics.shipment_leg``)
    and the logger CSV files of delivered legs (``logistics.temperature_reading``, feed
    ``logistics-logger-csv``, vectorized; each file registered once by SHA-256).
:func:`watch_excursions`
    loads what is staged, detects excursion episodes (:mod:`cmohub.coldchain`), writes one
    decision packet per episode to ``reports/packets/`` and alerts through a notifier when an
    excursion opens and once more when it closes (:func:`cmohub.notify.notify_once`).

Idempotence: every payload is kept in ``raw/`` by SHA-256 and staged under a part named by
it; what a run staged is remembered per feed (``state/<feed>/seen.parquet``: event keys,
shipment digests), so the lookback window and reruns suppress it as duplicates instead of
staging it twice; cursors move only after a run succeeded. Every record ends staged,
quarantined or suppressed, and the ledger (``runs/<run>/<task>.json``) checks that.

Quarantine replay (:mod:`cmohub.pipelines.replay`) re-enters the same staging functions,
:func:`stage_epcis_payload` and :func:`stage_logger_file`, with a
:class:`~cmohub.pipelines.selection.RecordSelection`:
the locators the run quarantined. Only those records are staged, quarantined again or
reported missing; the rest of the payload was counted by the run that received it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from cmohub.coldchain import (
    Directory,
    ExcursionReport,
    SiteIds,
    build_custody_ledger,
    detect_excursions,
)
from cmohub.coldchain.custody import CustodyLedger
from cmohub.contracts.report import QuarantineEntry, Reason, SourceRef
from cmohub.contracts.store import load_contract, load_product_catalog
from cmohub.errors import ConfigError, ParseError
from cmohub.formats.epcis import (
    EpcisEvent,
    SensorReadings,
    mapping_record,
    parse_epcis_document,
    resolve_events,
    sensor_readings,
)
from cmohub.formats.loggers import parse_logger_csv
from cmohub.identifiers import validate_coi
from cmohub.identity import IdentityPort
from cmohub.lake import Lake
from cmohub.log import get_logger
from cmohub.mapping.readers import SourceRecord, read_records
from cmohub.mapping.store import load_mapping
from cmohub.notify import Alert, AlertRegister, LogNotifier, Notifier, notify_once
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.ledger import RunLedger
from cmohub.pipelines.locks import run_lock
from cmohub.pipelines.selection import ALL_RECORDS, RecordSelection
from cmohub.pipelines.snapshot import load_dataset
from cmohub.pipelines.stage import FeedStager
from cmohub.pipelines.state import load_cursor, save_cursor
from cmohub.sources.auth import build_auth
from cmohub.sources.courier import CourierApi, rest_listing
from cmohub.sources.endpoint import EndpointLike
from cmohub.sources.epcis import EpcisQuery, EpcisQueryClient
from cmohub.sources.registry import FileRegistry
from cmohub.sources.rest import RestClient, RetryPolicy

log = get_logger(__name__)

FEED_CUSTODY = "logistics-epcis-custody"
FEED_SENSOR = "logistics-epcis-sensor"
FEED_SHIPMENTS = "logistics-courier-shipments"
FEED_LEGS = "logistics-courier-legs"
FEED_LOGGERS = "logistics-logger-csv"
ALERT_SCOPE = "logistics-alerts"
PACKETS_DIR = "reports/packets"
READINGS = "logistics.temperature_reading"
#: The run lock of the EPCIS sync; a replay of an EPCIS feed holds it too (shared state).
EPCIS_LOCK = "logistics:epcis"


# --- state: what was staged before ---------------------------------------------------------------


class SeenKeys:
    """Keys of records a feed already staged or quarantined (``state/<feed>/seen.parquet``)."""

    def __init__(self, lake: Lake, feed: str) -> None:
        self._lake = lake
        self._path = lake.state_path(feed, "seen").with_suffix(".parquet")
        self._keys: set[str] = set()
        self._added = False
        if self._path.exists():
            self._keys = set(lake.read_parquet(self._path).column("key").to_pylist())

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, keys: Iterable[str]) -> None:
        before = len(self._keys)
        self._keys.update(keys)
        self._added = self._added or len(self._keys) != before

    def save(self) -> None:
        if self._added:
            table = pa.table({"key": pa.array(sorted(self._keys), pa.string())})
            self._lake.write_parquet(self._path, table)
            self._added = False


class Retractions:
    """Keys of custody events retracted by EPCIS error declarations (applied when loading)."""

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        self._path = lake.state_path(FEED_CUSTODY, "retracted")
        self.keys: set[str] = set()
        if self._path.exists():
            self.keys = set(lake.read_json(self._path)["retracted"])
        self._size = len(self.keys)

    def save(self) -> None:
        if len(self.keys) != self._size:
            self._lake.write_json(self._path, {"retracted": sorted(self.keys)})
            self._size = len(self.keys)


# --- helpers -------------------------------------------------------------------------------------


def _entry(dataset: str, sha256: str, locator: str, code: str, rule: str) -> QuarantineEntry:
    return QuarantineEntry(
        dataset=dataset,
        source=SourceRef(sha256, locator),
        reasons=(Reason(code, rule, None),),
    )


@contextmanager
def _identity_port(context: RunContext, port: IdentityPort | None) -> Iterator[IdentityPort]:
    """``port``, or the vault the settings name (opened here, closed after)."""
    if port is not None:
        yield port
        return
    from cmohub.vault import open_vault  # noqa: PLC0415 - the vault only when none is given

    vault = open_vault(context.settings)
    try:
        yield vault
    finally:
        vault.close()


def _rest(
    client: httpx.Client,
    endpoint: EndpointLike | None,
    options: Mapping[str, Any],
    retry: RetryPolicy | None,
) -> RestClient:
    base = endpoint.base_url if endpoint is not None and endpoint.base_url else None
    base = base or options.get("base_url")
    if not base:
        raise ConfigError("no base URL: define the connection", code="SOURCE_CONFIG")
    auth = build_auth(options.get("auth") or {}, endpoint, str(base))
    return RestClient(client, str(base), auth=auth, retry=retry)


def _window(lake: Lake, feed: str, lookback: timedelta, until: datetime) -> datetime | None:
    cursor = load_cursor(lake, feed)
    return None if cursor is None else min(cursor, until) - lookback


def readings_table(
    *,
    logger_id: pa.Array | Sequence[str],
    shipment_id: pa.Array | Sequence[str | None],
    observed_at: pa.Array,
    celsius: pa.Array | Sequence[float],
    locators: Sequence[str],
    feed: str,
    run_id: str,
    source_sha256: str,
) -> pa.Table:
    """Temperature readings in the staged form of ``logistics.temperature_reading``."""
    n = len(locators)
    return pa.table(
        {
            "logger_id": pa.array(logger_id, pa.string()),
            "shipment_id": pa.array(shipment_id, pa.string()),
            "observed_at": observed_at,
            "celsius": pa.array(celsius, pa.float64()),
            "_feed": pa.array([feed] * n, pa.string()),
            "_run_id": pa.array([run_id] * n, pa.string()),
            "_source_ref": pa.array([f"{source_sha256}#{loc}" for loc in locators], pa.string()),
        }
    )


class FeedBatch:
    """One feed's payloads of a run, validated and staged together.

    Contract validation has a fixed cost (about half a second), so a run collects the rows of
    all its payloads — each row keeps its own ``_source_ref`` (payload SHA-256 + locator) —
    and stages them once, as one part named by the SHA-256 of the payloads' hashes (a rerun
    over the same payloads rewrites the same part).
    """

    def __init__(self, stager: FeedStager) -> None:
        self.stager = stager
        self.tables: list[pa.Table] = []
        self.upstream: list[QuarantineEntry] = []
        self.duplicates = 0
        self.extra = 0
        self.sources: list[str] = []

    @property
    def dataset(self) -> str:
        return self.stager.contract.dataset

    def add_records(self, sha256: str, records: Iterable[SourceRecord]) -> None:
        """Map and resolve one payload's records through the feed's mapping."""
        from cmohub.contracts.arrow import rows_to_table  # noqa: PLC0415 - only for mapped feeds
        from cmohub.mapping.engine import apply_mapping  # noqa: PLC0415
        from cmohub.mapping.identity import resolve_identities  # noqa: PLC0415

        stager = self.stager
        context = stager.context
        mapped = apply_mapping(
            stager.compiled, records, run_id=context.path_run_id, source_sha256=sha256
        )
        mapped = resolve_identities(mapped, stager.port, actor=context.actor(stager.feed))
        self.tables.append(rows_to_table(mapped.canonical_rows(), stager.contract))
        self.upstream.extend(mapped.quarantine_entries(stager.key_fields))
        self.sources.append(sha256)

    def add_table(self, sha256: str, table: pa.Table) -> None:
        self.tables.append(table)
        self.sources.append(sha256)

    def stage(self) -> None:
        if not self.sources and not self.upstream and not self.duplicates and not self.extra:
            return
        batch = hashlib.sha256("".join(sorted(set(self.sources))).encode()).hexdigest()
        table = (
            pa.concat_tables(self.tables, promote_options="permissive")
            if self.tables
            else readings_table_empty(self.stager.feed)
            if self.dataset == READINGS
            else None
        )
        if table is None:
            from cmohub.contracts.arrow import to_arrow_schema  # noqa: PLC0415

            table = to_arrow_schema(self.stager.contract).empty_table()
        self.stager.stage_table(
            batch,
            table,
            upstream=self.upstream,
            upstream_duplicates=self.duplicates,
            extra=self.extra,
        )


# --- EPCIS ---------------------------------------------------------------------------------------


@dataclass
class _EpcisStaging:
    custody: FeedBatch
    sensor: FeedBatch
    seen: SeenKeys
    retractions: Retractions
    run_id: str
    events: int = 0

    def save_state(self) -> None:
        """Remember the event keys and retractions of this run (before its ledger)."""
        self.seen.save()
        self.retractions.save()


def open_epcis_staging(
    context: RunContext,
    port: IdentityPort,
    ledger: RunLedger,
    *,
    feeds: Iterable[str] = (FEED_CUSTODY, FEED_SENSOR),
) -> _EpcisStaging:
    """Batches of both EPCIS feeds over the feed state. A page holds records of both; a feed
    not in ``feeds`` (a replay of the other) gets a batch that is never staged, counted in
    a ledger of its own that is never saved."""
    wanted = set(feeds)

    def batch(feed: str) -> FeedBatch:
        counted = ledger if feed in wanted else RunLedger(task="unstaged")
        return FeedBatch(FeedStager(context, feed, port=port, ledger=counted))

    return _EpcisStaging(
        custody=batch(FEED_CUSTODY),
        sensor=batch(FEED_SENSOR),
        seen=SeenKeys(context.lake, FEED_CUSTODY),
        retractions=Retractions(context.lake),
        run_id=context.path_run_id,
    )


@dataclass(frozen=True)
class EpcisSelection:
    """The records of one EPCIS payload a replay re-stages, per feed."""

    custody: RecordSelection
    sensor: RecordSelection


def _selected_readings(readings: SensorReadings, select: RecordSelection) -> SensorReadings:
    """The readings, rejections and summaries at selected locators (in their order)."""
    keep = [i for i, locator in enumerate(readings.locator) if select.take(locator)]
    return SensorReadings(
        logger_id=[readings.logger_id[i] for i in keep],
        shipment_id=[readings.shipment_id[i] for i in keep],
        observed_at=[readings.observed_at[i] for i in keep],
        celsius=[readings.celsius[i] for i in keep],
        locator=[readings.locator[i] for i in keep],
        rejected=[r for r in readings.rejected if select.take(r[0])],
        conditions=[c for c in readings.conditions if select.take(c.locator)],
        summaries=[s for s in readings.summaries if select.take(s.locator)],
        other_reports=readings.other_reports,
    )


def stage_epcis_payload(
    data: bytes, sha256: str, staging: _EpcisStaging, *, select: EpcisSelection | None = None
) -> None:
    """Stage one EPCIS document or query page: custody events and sensor readings.

    ``select`` (a quarantine replay) limits it to the records a run quarantined: other
    events are skipped, not counted (the run that received the page counted them). A
    selected event is staged although its key is in :class:`SeenKeys` — it is there because
    that run quarantined it, and the replay chain stages a quarantined record at most once.
    A whole selection (``document``: the run could not read the page) is an ingest run's.
    """
    custody, sensor = staging.custody, staging.sensor
    custody_ds, sensor_ds = custody.dataset, sensor.dataset
    on_custody, on_sensor = (select.custody, select.sensor) if select else (ALL_RECORDS,) * 2
    try:
        document = parse_epcis_document(data)
    except ParseError as error:
        # A page that cannot be read is quarantined once, under the custody feed.
        custody.upstream.extend(
            _entry(custody_ds, sha256, locator, error.code, "epcis")
            for locator in on_custody.unreadable("document")
        )
        sensor.upstream.extend(
            _entry(sensor_ds, sha256, locator, error.code, "epcis")
            for locator in on_sensor.unreadable(None)
        )
        return
    staging.events += document.received
    resolution = resolve_events(document.events)
    staging.retractions.keys.update(resolution.retracted_keys)
    custody_records: list[SourceRecord] = []
    custody_upstream: list[QuarantineEntry] = []
    sensor_upstream: list[QuarantineEntry] = []
    custody_duplicates = sensor_duplicates = 0
    sensor_events: list[EpcisEvent] = []
    for rejected in document.rejected:
        if rejected.sensor:
            if on_sensor.take(rejected.locator):
                sensor_upstream.append(
                    _entry(sensor_ds, sha256, rejected.locator, rejected.code, "epcis")
                )
        elif on_custody.take(rejected.locator):
            custody_upstream.append(
                _entry(custody_ds, sha256, rejected.locator, rejected.code, "epcis")
            )
    suppressed = [*resolution.duplicates, *resolution.declarations, *resolution.retracted]
    for event in suppressed:
        if event.is_sensor_event:
            sensor_duplicates += len(event.temperature_locators) if on_sensor.whole else 0
        else:
            custody_duplicates += 1 if on_custody.whole else 0
    processed: list[str] = []
    for event in resolution.kept:
        chosen = on_sensor if event.is_sensor_event else on_custody
        if not chosen.has(event.locator):
            continue  # a replay's: not one of the records it re-stages
        if chosen.whole and event.key in staging.seen:
            if event.is_sensor_event:
                sensor_duplicates += len(event.temperature_locators)
            else:
                custody_duplicates += 1
            continue
        processed.append(event.key)
        if event.is_sensor_event:
            sensor_events.append(event)
        elif not chosen.take(event.locator):
            continue
        elif event.coi is None:
            custody_upstream.append(
                _entry(custody_ds, sha256, event.locator, "EPCIS_NO_COI", "epcis")
            )
        else:
            custody_records.append(SourceRecord(event.locator, mapping_record(event)))

    if on_custody.whole or custody_records:
        custody.add_records(sha256, custody_records)
    custody.upstream.extend(custody_upstream)
    custody.duplicates += custody_duplicates

    # Sensor events whose COI is corrupted lose their readings too (quarantine first).
    usable: list[EpcisEvent] = []
    for event in sensor_events:
        coi = event.coi
        if coi is not None and validate_coi(coi) is not None:
            sensor_upstream.extend(
                _entry(sensor_ds, sha256, locator, "COI_CHECK_INVALID", "epcis")
                for locator in event.temperature_locators
                if on_sensor.take(locator)
            )
        else:
            usable.append(event)
    readings = sensor_readings(usable)
    if not on_sensor.whole:
        readings = _selected_readings(readings, on_sensor)
    sensor_upstream.extend(
        _entry(sensor_ds, sha256, locator, code, "epcis") for locator, code, _ in readings.rejected
    )
    sensor_upstream.extend(
        _entry(sensor_ds, sha256, s.locator, "EPCIS_SENSOR_SUMMARY_ONLY", "epcis")
        for s in readings.summaries
    )
    if on_sensor.whole or readings.locator:
        table = readings_table(
            logger_id=readings.logger_id,
            shipment_id=readings.shipment_id,
            observed_at=pa.array(readings.observed_at, pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            celsius=readings.celsius,
            locators=readings.locator,
            feed=sensor.stager.feed,
            run_id=staging.run_id,
            source_sha256=sha256,
        )
        sensor.add_table(sha256, table)
    sensor.upstream.extend(sensor_upstream)
    sensor.duplicates += sensor_duplicates
    staging.seen.add(processed)


def sync_epcis(
    context: RunContext,
    *,
    endpoint: EndpointLike | None = None,
    client: httpx.Client | None = None,
    port: IdentityPort | None = None,
    retry: RetryPolicy | None = None,
    since: datetime | None = None,
) -> dict[str, Any]:
    """Stage custody events and sensor readings from the EPCIS repository (one window).

    The window starts at the feed's cursor minus the lookback (everything on the first run),
    or at ``since`` for a backfill; it ends at the run's interval end.
    """
    spec = load_mapping(FEED_CUSTODY)
    options = dict(spec.source.options)
    lake = context.lake
    lookback = timedelta(minutes=int(options.get("lookback_minutes", 1440)))
    until = context.interval_end
    with (
        run_lock(context.settings.home_dir, EPCIS_LOCK),
        _identity_port(context, port) as identity,
    ):
        if since is None:
            since = _window(lake, FEED_CUSTODY, lookback, until)
        ledger = RunLedger(task="sync_epcis")
        staging = open_epcis_staging(context, identity, ledger)
        owns = client is None
        http = client or httpx.Client()
        pages = 0
        try:
            query_client = EpcisQueryClient(
                _rest(http, endpoint, options, retry),
                events_path=str(options.get("path", "events")),
                page_size=int(options.get("page_size", 200)),
            )
            query = EpcisQuery(
                since=since,
                until=until,
                by=str(options.get("time_filter", "eventTime")),
                match_any_epc=options.get("match_any_epc"),
            )
            for page in query_client.iter_pages(query):
                pages += 1
                ref, _ = lake.put_raw(page.content, kind="epcis")
                ledger.inputs.append(
                    {"feed": FEED_CUSTODY, "raw": ref.relative_path, "url": page.url}
                )
                stage_epcis_payload(page.content, page.sha256, staging)
        finally:
            if owns:
                http.close()
        staging.custody.stage()
        staging.sensor.stage()
        results = [staging.custody.stager.finish(), staging.sensor.stager.finish()]
        staging.save_state()
        path = ledger.save(context)
        save_cursor(lake, FEED_CUSTODY, until, run_id=context.path_run_id)
    log.info("sync_epcis: %d pages, %d events", pages, staging.events)
    return {
        **ledger.summary(),
        "ledger": path,
        "pages": pages,
        "events": staging.events,
        "since": since.isoformat() if since else None,
        "until": until.isoformat(),
        "feeds": {r.feed: r.to_dict() for r in results},
    }


# --- courier -------------------------------------------------------------------------------------


def _digest(record: Any) -> str:
    body = {k: v for k, v in record.items() if k != "^"} if isinstance(record, Mapping) else record
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def stage_logger_file(
    data: bytes,
    sha256: str,
    batch: FeedBatch,
    run_id: str,
    *,
    select: RecordSelection = ALL_RECORDS,
) -> None:
    """Add one logger CSV export to the run's batch (vectorized; the mapping states the same
    semantics row by row). ``select`` (a quarantine replay) limits it to the rows a run
    quarantined; the others were counted by the run that received the file."""
    dataset = batch.dataset
    try:
        parsed = parse_logger_csv(data)
    except ParseError as error:
        batch.upstream.extend(
            _entry(dataset, sha256, locator, error.code, "loggers")
            for locator in select.unreadable("file")
        )
        return
    locators = parsed.locators()
    logger_id, shipment_id = parsed.logger_id, parsed.shipment_id
    observed_at, celsius = parsed.observed_at, parsed.celsius
    if not select.whole:
        keep = [i for i, locator in enumerate(locators) if select.take(locator)]
        taken = pa.array(keep, pa.int64())
        logger_id, shipment_id = logger_id.take(taken), shipment_id.take(taken)
        observed_at, celsius = observed_at.take(taken), celsius.take(taken)
        locators = [locators[i] for i in keep]
    if select.whole or locators:
        table = readings_table(
            logger_id=logger_id,
            shipment_id=shipment_id,
            observed_at=observed_at,
            celsius=celsius,
            locators=locators,
            feed=batch.stager.feed,
            run_id=run_id,
            source_sha256=sha256,
        )
        batch.add_table(sha256, table)
    batch.upstream.extend(
        _entry(dataset, sha256, f"row={row}", code, "loggers")
        for row, code, _ in parsed.rejected
        if select.take(f"row={row}")
    )


def readings_table_empty(feed: str) -> pa.Table:
    return readings_table(
        logger_id=[],
        shipment_id=[],
        observed_at=pa.array([], pa.timestamp("us", tz="UTC")),
        celsius=[],
        locators=[],
        feed=feed,
        run_id="none",
        source_sha256="0" * 64,
    )


def sync_courier(
    context: RunContext,
    *,
    endpoint: EndpointLike | None = None,
    client: httpx.Client | None = None,
    port: IdentityPort | None = None,
    retry: RetryPolicy | None = None,
    registry: FileRegistry | None = None,
    since: datetime | None = None,
) -> dict[str, Any]:
    """Stage shipments, legs and logger files from the courier API (one window: from the
    cursor minus the lookback, or ``since``, to the interval end)."""
    ship_spec = load_mapping(FEED_SHIPMENTS)
    leg_spec = load_mapping(FEED_LEGS)
    logger_spec = load_mapping(FEED_LOGGERS)
    shipments_listing = rest_listing(dict(ship_spec.source.options))
    files_listing = rest_listing(dict(logger_spec.source.options))
    lake = context.lake
    until = context.interval_end
    with (
        run_lock(context.settings.home_dir, "logistics:courier"),
        _identity_port(context, port) as identity,
    ):
        ledger = RunLedger(task="sync_courier")
        shipments = FeedBatch(FeedStager(context, FEED_SHIPMENTS, port=identity, ledger=ledger))
        legs = FeedBatch(FeedStager(context, FEED_LEGS, port=identity, ledger=ledger))
        loggers = FeedBatch(FeedStager(context, FEED_LOGGERS, port=identity, ledger=ledger))
        seen = SeenKeys(lake, FEED_SHIPMENTS)
        files = registry or FileRegistry.from_url(context.settings.hub_database_url)
        owns = client is None
        http = client or httpx.Client()
        pages = downloaded = 0
        try:
            rest = _rest(http, endpoint, dict(ship_spec.source.options), retry)
            api = CourierApi(rest, shipments_listing)
            ships_since = since or _window(
                lake, FEED_SHIPMENTS, shipments_listing.incremental.lookback, until
            )
            for _carrier, page in api.iter_pages(ships_since, until):
                pages += 1
                ref, _ = lake.put_raw(page.content, kind="courier")
                ledger.inputs.append({"feed": FEED_SHIPMENTS, "raw": ref.relative_path})
                ship_records = list(read_records(ship_spec.source, page.content))
                leg_records = list(read_records(leg_spec.source, page.content))
                new_ships = [r for r in ship_records if _digest(r.data) not in seen]
                new_legs = [
                    r
                    for r in leg_records
                    if not isinstance(r.data, Mapping) or _digest(r.data.get("^")) not in seen
                ]
                shipments.add_records(page.sha256, new_ships)
                shipments.duplicates += len(ship_records) - len(new_ships)
                legs.add_records(page.sha256, new_legs)
                legs.duplicates += len(leg_records) - len(new_legs)
                seen.add(_digest(r.data) for r in ship_records)

            file_api = CourierApi(rest, files_listing)
            since_files = since or _window(
                lake, FEED_LOGGERS, files_listing.incremental.lookback, until
            )
            counts = ledger.feed(FEED_LOGGERS)
            for _carrier, page in file_api.iter_pages(since_files, until):
                for item in page.json().get(files_listing.record_path) or ():
                    counts.files += 1
                    body = file_api.download(str(item["url"]))
                    downloaded += 1
                    registration = files.register(
                        body.sha256,
                        size=len(body.content),
                        feed=FEED_LOGGERS,
                        name=str(item.get("name", item["url"])),
                        received_at=context.clock(),
                        run_id=context.path_run_id,
                    )
                    if not registration.new and registration.first_run_id != context.path_run_id:
                        counts.duplicate_files += 1
                        continue
                    ref, _ = lake.put_raw(body.content, kind="logger_csv")
                    ledger.inputs.append({"feed": FEED_LOGGERS, "raw": ref.relative_path})
                    stage_logger_file(body.content, body.sha256, loggers, context.path_run_id)
        finally:
            if owns:
                http.close()
        for batch in (shipments, legs, loggers):
            batch.stage()
        results = [b.stager.finish() for b in (shipments, legs, loggers)]
        seen.save()
        path = ledger.save(context)
        save_cursor(lake, FEED_SHIPMENTS, until, run_id=context.path_run_id)
        save_cursor(lake, FEED_LOGGERS, until, run_id=context.path_run_id)
    return {
        **ledger.summary(),
        "ledger": path,
        "pages": pages,
        "files_downloaded": downloaded,
        "until": until.isoformat(),
        "feeds": {r.feed: r.to_dict() for r in results},
    }


# --- loading what is staged ----------------------------------------------------------------------


@dataclass
class LogisticsTables:
    """The staged logistics datasets, one row per key (the latest staged version)."""

    shipments: pa.Table
    legs: pa.Table
    custody: pa.Table
    readings: pa.Table
    sites: pa.Table | None = None
    notes: list[str] = field(default_factory=list)

    def directory(self) -> Directory | None:
        if self.sites is None or self.sites.num_rows == 0:
            return None
        entries = {}
        for row in self.sites.to_pylist():
            entries[row["fin"]] = SiteIds(
                fin=row["fin"],
                sgln=row.get("sgln"),
                pgln=row.get("pgln"),
                name=row.get("site_name"),
                time_zone=row.get("time_zone"),
            )
        if not any(s.pgln for s in entries.values()):
            return None
        return Directory(entries)


def load_staged(
    lake: Lake, dataset: str, *, since_day: date | None = None, up_to: date | None = None
) -> pa.Table:
    """Staged rows of ``dataset`` (partitions in [since_day, up_to]), latest per key."""
    table, _ = load_dataset(lake, load_contract(dataset), since=since_day, up_to=up_to)
    return table


def load_logistics(
    lake: Lake, *, since_day: date | None = None, up_to: date | None = None
) -> LogisticsTables:
    """The staged logistics datasets, with retracted custody events left out."""
    window = {"since_day": since_day, "up_to": up_to}
    custody = load_staged(lake, "logistics.custody_event", **window)
    retracted = Retractions(lake).keys
    if retracted and custody.num_rows:
        custody = custody.filter(
            pc.invert(pc.is_in(custody["event_id"], value_set=pa.array(sorted(retracted))))
        )
    sites = load_staged(lake, "master.site", up_to=up_to)
    return LogisticsTables(
        shipments=load_staged(lake, "logistics.shipment", **window),
        legs=load_staged(lake, "logistics.shipment_leg", **window),
        custody=custody,
        readings=load_staged(lake, READINGS, **window),
        sites=sites,
    )


# --- excursions, packets, alerts -----------------------------------------------------------------


def packet_name(episode: Mapping[str, Any]) -> str:
    """``<shipment>-<leg>-<start, UTC, compact>``: one packet per episode, stable across runs."""
    started: datetime = episode["started_at"]
    return f"{episode['shipment_id']}-{episode['leg_no']}-{started.astimezone(UTC):%Y%m%dT%H%MZ}"


def excursion_alerts(report: ExcursionReport, packets: Mapping[str, str]) -> list[Alert]:
    """An ``open`` alert for every episode, and a ``closed`` one for every closed episode."""
    alerts: list[Alert] = []
    for episode in report.episodes.to_pylist():
        name = packet_name(episode)
        key = f"excursion:{episode['shipment_id']}:{episode['leg_no']}:{name.rsplit('-', 1)[1]}"
        used, budget = episode["budget_minutes_used"], episode["budget_minutes"]
        over = budget is not None and used > budget
        limit = (
            f"above {episode['upper_celsius']:g} °C"
            if episode["direction"] == "above"
            else f"below {episode['lower_celsius']:g} °C"
        )
        severity = "critical" if over else "major"
        links = {"decision packet": packets[name]} if name in packets else {}
        where = (
            f"shipment {episode['shipment_id']} leg {episode['leg_no']} "
            f"(COI {episode['coi']}, {episode['product_code']}, {episode['class_code']})"
        )
        budget_text = (
            f"{used:g} of {budget:g} budget minutes used"
            + (" — budget exceeded" if over else f", {budget - used:g} left")
            if budget is not None
            else "no budget known"
        )
        alerts.append(
            Alert(
                key=key,
                state="open",
                title=f"Temperature excursion {limit} on {episode['shipment_id']}",
                body=(
                    f"{where}: since {episode['started_at']:%Y-%m-%d %H:%M} UTC, peak "
                    f"{episode['peak_celsius']:g} °C; {budget_text}."
                ),
                kind="temperature_excursion",
                severity=severity,
                links=links,
            )
        )
        if episode["state"] == "closed":
            ended = episode["ended_at"]
            end_text = (
                f"back in class at {ended:%Y-%m-%d %H:%M} UTC"
                if ended is not None
                else "the leg arrived before readings came back in class"
            )
            alerts.append(
                Alert(
                    key=key,
                    state="closed",
                    title=f"Temperature excursion closed on {episode['shipment_id']}",
                    body=(
                        f"{where}: {end_text}; {episode['duration_minutes']:g} minutes outside, "
                        f"peak {episode['peak_celsius']:g} °C; {budget_text}."
                    ),
                    kind="temperature_excursion",
                    severity=severity,
                    links=links,
                )
            )
    return alerts


def watch_excursions(
    context: RunContext,
    *,
    notifier: Notifier | None = None,
    lookback_days: int = 30,
    packets: bool = True,
) -> dict[str, Any]:
    """Detect excursions in what is staged, write their packets, alert once per state."""
    from cmohub.publish.packets import render_packet  # noqa: PLC0415 - jinja only when used

    lake = context.lake
    as_of = context.interval_end
    tables = load_logistics(lake, since_day=(as_of - timedelta(days=lookback_days)).date())
    products = {code: entry.product for code, entry in load_product_catalog().items()}
    report = detect_excursions(
        tables.readings, tables.legs, tables.shipments, products, as_of=as_of
    )
    directory = tables.directory()
    custody: CustodyLedger | None = None
    if directory is not None and tables.custody.num_rows:
        custody = build_custody_ledger(tables.custody, tables.shipments, tables.legs, directory)
    written: dict[str, str] = {}
    if packets:
        for episode in report.episodes.to_pylist():
            name = packet_name(episode)
            html = render_packet(
                episode,
                report=report,
                tables=tables,
                custody=custody,
                directory=directory,
                as_of=as_of,
            )
            target = lake.path(f"{PACKETS_DIR}/{name}.html")
            lake.write_bytes(target, html.encode())
            written[name] = f"{PACKETS_DIR}/{name}.html"
    alerts = excursion_alerts(report, written)
    sent = notify_once(notifier or LogNotifier(), AlertRegister(lake, ALERT_SCOPE), alerts)
    episodes = report.episodes
    return {
        "as_of": as_of.isoformat(),
        "readings": report.readings.size,
        "episodes": episodes.num_rows,
        "open": int(pc.sum(pc.equal(episodes["state"], "open")).as_py() or 0),
        "exceeded": report.exceeded(),
        "alerts_sent": sent,
        "packets": sorted(written.values()),
        "custody_gaps": custody.exceptions() if custody is not None else None,
    }
