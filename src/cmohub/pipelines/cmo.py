"""CMO feeds, one DAG each: fetch → verify and register → stage → alert.

Each function is one task of the ``cmo_<cmo>`` DAG (built by :mod:`cmohub.airflow.factory`)
and takes a :class:`~cmohub.pipelines.context.RunContext`. They hand each other references
through small JSON reports in the run's folder (``runs/<run>/<feed>.<task>.report.json``),
never records or plaintext; the run ledger is ``runs/<run>/<feed>.stage.json``:

1. :func:`fetch_deliveries` lists the feed's folder (local inbox or SFTP), keeps the files that
   are complete (not a temporary name, size and time unchanged between two listings, checksum
   file arrived when the feed uses them) and not seen by an earlier run (a backfill can also
   give a delivery window), checks their checksums, and copies them **as delivered** (still
   encrypted) to the run's landing area. Files over the size limit are refused unread.
2. :func:`verify_deliveries` verifies and decrypts each landed file (OpenPGP: pinned sender,
   integrity protection, AES-256, expiry and revocation, size), then registers it by the
   SHA-256 of its content in the :class:`~cmohub.sources.registry.FileRegistry`: the same
   content again — under any name, re-encrypted or not — is a **duplicate** (FILE_DUPLICATE),
   suppressed and counted once. New files are kept in ``raw/`` exactly as delivered (the
   ciphertext, under the plaintext's SHA-256). Rejected files (CRYPTO_*, FILE_*) are kept too,
   under their own hash, registered as rejected, and never parsed. Nothing of a file is used
   before its verification passed.
3. :func:`stage_deliveries` re-verifies each accepted file from ``raw/``, routes it by name to
   its mappings (a Borealis batch record feeds four), and stages it with
   :class:`~cmohub.pipelines.stage.FeedStager` (map, verify every COI with the vault, validate,
   Parquet, quarantine). A file no mapping can read at all (truncated XML, an entity bomb, a
   wrong encoding) is quarantined whole with a PARSE_* code and the run goes on. It writes the
   run ledger (received = staged + quarantined + duplicates, per mapping; files, duplicate and
   rejected files per feed) and finds the deviations with patient impact it staged.
4. :func:`alert_deviations` raises one alert per new patient-impact deviation
   (``notify_once``, key ``deviation:<id>``) — in the same run, not at the nightly one.

:func:`ingest_cmo_feed` runs the four in order (``cmohub cmo ingest``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from upath import UPath

from cmohub.contracts.arrow import rows_to_table
from cmohub.contracts.report import QuarantineEntry, Reason, SourceRef
from cmohub.crypto.keyring import Keyring
from cmohub.crypto.openpgp import DEFAULT_POLICY, PublicKey, SecretKey, verify_decrypt
from cmohub.errors import ConfigError, CryptoError, HubError, MappingError, SourceError
from cmohub.identity import IdentityPort
from cmohub.lake import Lake, RawRef, sha256_hex
from cmohub.log import get_logger
from cmohub.mapping.engine import apply_mapping
from cmohub.mapping.identity import resolve_identities
from cmohub.mapping.readers import SourceRecord, read_records
from cmohub.mapping.spec import CompiledMapping, compile_mapping
from cmohub.mapping.store import load_mapping
from cmohub.notify import Alert, AlertRegister, LogNotifier, Notifier, notify_once
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.ledger import FeedCounts, RunLedger
from cmohub.pipelines.locks import run_lock
from cmohub.pipelines.stage import FeedStager, StageResult
from cmohub.sources.checksums import check_delivery
from cmohub.sources.delivery import (
    CmoFeed,
    DeliverySource,
    RemoteFile,
    is_checksum_file,
    list_complete,
    load_cmo_feed,
)
from cmohub.sources.registry import FileRegistry

log = get_logger(__name__)

DEVIATION_DATASET = "manufacturing.deviation"
#: Failures that say nothing about the delivered file: the run fails, the file stays unjudged.
NOT_THE_FILES_FAULT = frozenset(
    {
        "CRYPTO_BACKEND_FAILED",
        "CRYPTO_BACKEND_UNAVAILABLE",
        "CRYPTO_PASSPHRASE",
        "CRYPTO_KEY_INVALID",
        "CRYPTO_PIN_MISMATCH",
    }
)
#: Whole-file parse failures, by the mapping reader's code (the file is quarantined whole).
PARSE_CODES = {
    "MAPPING_SOURCE_UNSAFE_XML": "PARSE_XML_UNSAFE",
    "MAPPING_SOURCE_ENCODING": "PARSE_ENCODING",
}


# --- shared plumbing ------------------------------------------------------------------------------


def _report_path(context: RunContext, feed: str, task: str) -> UPath:
    return context.lake.run_dir(context.path_run_id) / f"{feed}.{task}.report.json"


def _relative(lake: Lake, path: UPath) -> str:
    return str(path.relative_to(lake.root))


def _write_report(context: RunContext, feed: str, task: str, report: dict[str, Any]) -> str:
    """Write a task's report into the run's folder; returns its path inside the lake."""
    path = _report_path(context, feed, task)
    context.lake.write_json(path, report)
    return _relative(context.lake, path)


def _read_report(context: RunContext, feed: str, task: str) -> dict[str, Any]:
    path = _report_path(context, feed, task)
    if not path.exists():
        raise ConfigError(
            f"the {task} report of this run is missing: run the {task} task first",
            code="CMO_RUN_INCOMPLETE",
            where=str(path),
        )
    report: dict[str, Any] = context.lake.read_json(path)
    return report


def _seen_path(lake: Lake, feed: str) -> UPath:
    return lake.state_path(feed, "seen")


def _load_seen(lake: Lake, feed: str) -> dict[str, list[Any]]:
    path = _seen_path(lake, feed)
    if not path.exists():
        return {}
    seen: dict[str, list[Any]] = lake.read_json(path).get("files", {})
    return seen


@contextmanager
def _feed_lock(context: RunContext, feed: str, task: str) -> Iterator[None]:
    with run_lock(context.settings.home_dir, f"cmo:{feed}:{task}"):
        yield


def open_source(feed: CmoFeed, context: RunContext, *, sftp: Any = None) -> DeliverySource:
    """The feed's delivery source: its inbox folder, or its SFTP server (an Endpoint)."""
    if feed.options.transport == "inbox":
        from cmohub.sources.inbox import InboxSource  # noqa: PLC0415 - paramiko-free path

        return InboxSource(feed.inbox_folder(context.settings.home_dir / "inbox"))
    if sftp is None:
        raise ConfigError(
            f"{feed.name} delivers by SFTP: define the Airflow connection "
            f"{feed.connection_id} (host, login, extra.private_key, extra.host_key)",
            code="CMO_FEED_CONNECTION_MISSING",
            where=feed.name,
        )
    from cmohub.sources.sftp import SftpSettings, SftpSource  # noqa: PLC0415 - paramiko

    settings = sftp if isinstance(sftp, SftpSettings) else SftpSettings.from_endpoint(sftp)
    return SftpSource(settings, feed.options.remote_dir)


def _in_window(file: RemoteFile, since: datetime | None, until: datetime | None) -> bool:
    """Whether a file was delivered in [since, until): its day folder, else its time."""
    day = file.delivered_on
    if day is not None:
        return (until is None or day < until.astimezone(UTC).date()) and (
            since is None or day >= since.astimezone(UTC).date()
        )
    return (until is None or file.mtime < until.timestamp()) and (
        since is None or file.mtime >= since.timestamp()
    )


# --- 1. fetch -------------------------------------------------------------------------------------


def fetch_deliveries(
    context: RunContext,
    *,
    feed: str,
    source: DeliverySource | None = None,
    sftp: Any = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Copy the feed's new, complete files (as delivered) to the run's landing area.

    A scheduled run takes every complete file not seen before; ``since`` and ``until``
    (a backfill, ``cmohub cmo ingest``) keep only files delivered in that window.
    """
    config = load_cmo_feed(feed)
    lake = context.lake
    landing = lake.path(f"landing/{feed}/run={context.path_run_id}")
    with _feed_lock(context, feed, "fetch"):
        opened = source or open_source(config, context, sftp=sftp)
        try:
            listing = list_complete(
                opened, settle_seconds=config.options.settle_seconds, sleep=sleep
            )
            by_path = {f.path: f for f in listing}
            seen = _load_seen(lake, feed)
            fetched: list[dict[str, Any]] = []
            pending: list[str] = []
            refused: list[dict[str, Any]] = []
            skipped = 0
            for item in listing:
                if is_checksum_file(config, item.path):
                    continue
                if seen.get(item.path, [None, None])[:2] == [item.size, item.mtime]:
                    skipped += 1
                    continue
                if not _in_window(item, since, until):
                    continue
                if item.size > config.options.max_bytes:
                    refused.append(
                        {"path": item.path, "size": item.size, "mtime": item.mtime,
                         "code": "FILE_TOO_LARGE"}
                    )  # fmt: skip
                    continue
                try:
                    data = opened.read(item.path, max_bytes=config.options.max_bytes)
                except SourceError as error:
                    if error.code != "FILE_TOO_LARGE":
                        raise
                    refused.append(
                        {"path": item.path, "size": item.size, "mtime": item.mtime,
                         "code": error.code}
                    )  # fmt: skip
                    continue
                checked = check_delivery(
                    config.options.checksums,
                    item,
                    data,
                    listing=by_path,
                    read=lambda p: opened.read(p, max_bytes=1 << 20),
                    manifest_name=config.options.manifest_name,
                )
                if checked.status == "pending":
                    pending.append(item.path)
                    continue
                digest = sha256_hex(data)
                target = landing / f"{digest}.bin"
                lake.write_bytes(target, data)
                fetched.append(
                    {
                        "path": item.path,
                        "size": item.size,
                        "mtime": item.mtime,
                        "sha256": digest,
                        "landing": _relative(lake, target),
                        "checksum": checked.status,
                        "checksum_file": checked.checksum_file,
                    }
                )
        finally:
            if source is None:
                opened.close()
    report = {
        "feed": feed,
        "run_id": context.run_id,
        "files": fetched,
        "pending": pending,
        "refused": refused,
        "skipped_seen": skipped,
        "listed": len(listing),
    }
    report_path = _write_report(context, feed, "fetch", report)
    log.info(
        "fetched %d new file(s) of %s (%d pending, %d refused, %d seen before)",
        len(fetched),
        feed,
        len(pending),
        len(refused),
        skipped,
        extra={"feed": feed, "run_id": context.run_id},
    )
    return {
        "feed": feed,
        "report": report_path,
        "fetched": len(fetched),
        "pending": len(pending),
        "refused": len(refused),
    }


# --- 2. verify, register, keep raw ----------------------------------------------------------------


@dataclass
class _Keys:
    sender: PublicKey | None
    recipient: SecretKey | None


def keys_for(config: CmoFeed, context: RunContext) -> _Keys:
    """The pinned sender's key and the hub's secret key, when the feed encrypts."""
    if not config.options.encrypted:
        return _Keys(None, None)
    keyring = Keyring.for_settings(context.settings)
    sender = keyring.sender(config.name, pinned=config.options.sender_fingerprint)
    return _Keys(sender, keyring.hub_secret())


def registry_for(context: RunContext) -> FileRegistry:
    return FileRegistry.from_url(context.settings.hub_database_url)


def _open(
    data: bytes, config: CmoFeed, keys: _Keys, context: RunContext
) -> tuple[bytes, dict[str, Any]]:
    """The verified plaintext of a delivered file and who signed it (raises CryptoError)."""
    if not config.options.encrypted:
        return data, {}
    assert keys.sender is not None and keys.recipient is not None
    verified = verify_decrypt(
        data,
        sender=keys.sender,
        recipient=keys.recipient,
        policy=DEFAULT_POLICY.with_max_bytes(config.options.max_bytes),
        now=context.clock(),
    )
    assert verified.data is not None
    signature = verified.signature
    return verified.data, {
        "signer": signature.signer,
        "signing_key": signature.signing_key,
        "signed_at": signature.signed_at.isoformat(),
    }


def verify_deliveries(
    context: RunContext,
    *,
    feed: str,
    registry: FileRegistry | None = None,
) -> dict[str, Any]:
    """Verify, decrypt and register each landed file; keep it raw; say where it goes."""
    config = load_cmo_feed(feed)
    fetched = _read_report(context, feed, "fetch")
    lake = context.lake
    registry = registry or registry_for(context)
    keys = keys_for(config, context) if fetched["files"] else _Keys(None, None)
    accepted: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = [
        {**item, "sha256": None, "raw": None, "message": "larger than the feed's size limit"}
        for item in fetched["refused"]
    ]
    received_at = context.clock()
    seen_now: set[str] = set()
    with _feed_lock(context, feed, "verify"):
        for item in fetched["files"]:
            data = lake.path(item["landing"]).read_bytes()
            routes = [r.mapping for r in config.routes_for(item["path"])]
            try:
                if item["checksum"] == "mismatch":
                    raise SourceError(
                        f"the file does not match its checksum in {item['checksum_file']}",
                        code="FILE_CHECKSUM_MISMATCH",
                    )
                if not routes:
                    raise SourceError(
                        "no mapping of the feed reads files with this name",
                        code="FILE_UNROUTED",
                    )
                plaintext, signature = _open(data, config, keys, context)
            except (CryptoError, SourceError) as error:
                if error.code in NOT_THE_FILES_FAULT:
                    raise  # our keys or our gpg: fail the task, reject nothing
                rejected.append(
                    _reject(item, data, error, config=config, registry=registry, context=context)
                )
                continue
            digest = sha256_hex(plaintext)
            registration = registry.register(
                digest,
                size=len(plaintext),
                feed=feed,
                name=item["path"],
                received_at=received_at,
                run_id=context.run_id,
            )
            # A retry of this task (same run) or a run that stopped before staging finishes
            # the file; the same content twice in one delivery is a duplicate all the same.
            resumed = (
                not registration.new
                and digest not in seen_now
                and (
                    registration.first_run_id == context.run_id
                    or registry.status(digest) == "received"
                )
            )
            seen_now.add(digest)
            if not registration.new and not resumed:
                duplicates.append(
                    {
                        "path": item["path"],
                        "sha256": digest,
                        "delivered_sha256": item["sha256"],
                        "original": registration.first_name,
                        "original_run_id": registration.first_run_id,
                    }
                )
                continue
            registry.mark(digest, "received")
            raw, _ = lake.put_raw_as(digest, data, kind=feed, encrypted=config.options.encrypted)
            accepted.append(
                {
                    "path": item["path"],
                    "sha256": digest,
                    "delivered_sha256": item["sha256"],
                    "size": len(plaintext),
                    "raw": raw.relative_path,
                    "encrypted": config.options.encrypted,
                    "routes": routes,
                    **signature,
                }
            )
            del plaintext
    report = {
        "feed": feed,
        "run_id": context.run_id,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
        "files": fetched["files"],
    }
    report_path = _write_report(context, feed, "verify", report)
    codes: dict[str, int] = {}
    for item in rejected:
        codes[item["code"]] = codes.get(item["code"], 0) + 1
    log.info(
        "%s: %d file(s) accepted, %d duplicate(s), %d rejected %s",
        feed,
        len(accepted),
        len(duplicates),
        len(rejected),
        codes,
        extra={"feed": feed, "run_id": context.run_id},
    )
    return {
        "feed": feed,
        "report": report_path,
        "accepted": len(accepted),
        "duplicates": len(duplicates),
        "rejected": codes,
    }


def _reject(
    item: dict[str, Any],
    data: bytes,
    error: HubError,
    *,
    config: CmoFeed,
    registry: FileRegistry,
    context: RunContext,
) -> dict[str, Any]:
    """Keep a rejected file as delivered, register it as rejected, say why (never parse it)."""
    digest = item["sha256"]
    lake = context.lake
    raw, _ = lake.put_raw_as(digest, data, kind=f"{config.name}-rejected", encrypted=False)
    registration = registry.register(
        digest,
        size=len(data),
        feed=config.name,
        name=item["path"],
        received_at=context.clock(),
        run_id=context.run_id,
    )
    if registration.new:
        registry.mark(digest, f"rejected:{error.code}")
    log.warning(
        "%s: delivered file rejected: %s",
        config.name,
        error.code,
        extra={"feed": config.name, "file": item["path"], "sha256": digest},
    )
    return {
        "path": item["path"],
        "size": item["size"],
        "sha256": digest,
        "raw": raw.relative_path,
        "code": error.code,
        "message": error.message,
    }


# --- 3. stage -------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """One mapping's rows of every file of the run, validated and staged in one go."""

    stager: FeedStager
    compiled: CompiledMapping
    rows: list[dict[str, Any]] = field(default_factory=list)
    upstream: list[QuarantineEntry] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class FileStaging:
    """The mappings' batches of one run: files are added, then each mapping staged once."""

    context: RunContext
    port: IdentityPort
    ledger: RunLedger
    batches: dict[str, _Batch] = field(default_factory=dict)

    def batch(self, mapping: str) -> _Batch:
        if mapping not in self.batches:
            compiled = compile_mapping(load_mapping(mapping))
            stager = FeedStager(self.context, compiled, port=self.port, ledger=self.ledger)
            self.batches[mapping] = _Batch(stager, compiled)
        return self.batches[mapping]

    def add(self, mapping: str, sha256: str, records: list[SourceRecord]) -> None:
        """Map one file's records (lineage: the file's SHA-256) and settle their COIs."""
        batch = self.batch(mapping)
        mapped = apply_mapping(
            batch.compiled, records, run_id=self.context.path_run_id, source_sha256=sha256
        )
        mapped = resolve_identities(mapped, self.port, actor=self.context.actor(mapping))
        batch.rows.extend(mapped.canonical_rows())
        batch.upstream.extend(mapped.quarantine_entries(batch.stager.key_fields))
        batch.files.append(sha256)

    def reject_file(self, mapping: str, sha256: str, entry: QuarantineEntry) -> None:
        batch = self.batch(mapping)
        batch.upstream.append(entry)
        batch.files.append(sha256)

    def finish(self) -> list[StageResult]:
        """Validate and stage each mapping's rows once (one contract run per mapping)."""
        results = []
        for _, batch in sorted(self.batches.items()):
            stager = batch.stager
            table = rows_to_table(batch.rows, stager.contract)
            key = sha256_hex("\n".join(sorted(batch.files)).encode())
            stager.stage_table(key, table, upstream=batch.upstream)
            results.append(stager.finish())
        return results


def open_raw(context: RunContext, config: CmoFeed, ref: RawRef, keys: _Keys) -> bytes:
    """A kept file's plaintext, verified again before use (it must still match its hash)."""
    data = context.lake.path(ref.relative_path).read_bytes()
    plaintext, _ = _open(data, config, keys, context)
    if sha256_hex(plaintext) != ref.sha256:
        raise CryptoError(
            "the raw file no longer matches what was verified",
            code="CRYPTO_RAW_MISMATCH",
            where=ref.relative_path,
        )
    return plaintext


def read_file(
    staging: FileStaging, mapping: str, sha256: str, plaintext: bytes
) -> list[SourceRecord] | None:
    """The file's records for ``mapping``, or None when it cannot read the file at all.

    An unreadable file is quarantined whole (PARSE_*) under ``mapping``: a file that feeds
    several mappings is quarantined under each one that cannot read it, so that each of
    their datasets counts what it is missing and each can be replayed on its own.
    """
    spec = staging.batch(mapping).compiled.spec
    try:
        return list(read_records(spec.source, plaintext))
    except MappingError as error:
        staging.reject_file(
            mapping,
            sha256,
            QuarantineEntry(
                dataset=spec.dataset,
                source=SourceRef(sha256, "file"),
                reasons=(
                    Reason(_parse_code(error, spec.source.format), f"mapping:{mapping}", None),
                ),
            ),
        )
        return None


def _parse_code(error: MappingError, source_format: str) -> str:
    if error.code in PARSE_CODES:
        return PARSE_CODES[error.code]
    return f"PARSE_{source_format.upper()}_INVALID"


def stage_deliveries(
    context: RunContext,
    *,
    feed: str,
    port: IdentityPort | None = None,
    registry: FileRegistry | None = None,
) -> dict[str, Any]:
    """Stage every accepted file through its mappings; write the ledger; find deviations.

    Each mapping's records from all of the run's files are validated together (one contract
    run per mapping, not per file); every row keeps its own file's SHA-256 as lineage.
    """
    config = load_cmo_feed(feed)
    verified = _read_report(context, feed, "verify")
    registry = registry or registry_for(context)
    if port is None and verified["accepted"]:
        from cmohub.vault import open_vault  # noqa: PLC0415 - only when there is work

        vault = open_vault(context.settings)
        try:
            return _stage(context, config, verified, vault, registry)
        finally:
            vault.close()
    return _stage(context, config, verified, port, registry)


def _stage(
    context: RunContext,
    config: CmoFeed,
    verified: dict[str, Any],
    port: IdentityPort | None,
    registry: FileRegistry,
) -> dict[str, Any]:
    feed = config.name
    lake = context.lake
    ledger = RunLedger(task=f"{feed}.stage")
    keys = keys_for(config, context) if verified["accepted"] else _Keys(None, None)
    staging = FileStaging(context, port, ledger) if port is not None else None
    with _feed_lock(context, feed, "stage"):
        for item in sorted(verified["accepted"], key=lambda i: i["path"]):
            assert staging is not None
            ref = RawRef(item["sha256"], 0, feed, bool(item["encrypted"]))
            plaintext = open_raw(context, config, ref, keys)
            parse_failed = False
            for mapping in item["routes"]:
                records = read_file(staging, mapping, item["sha256"], plaintext)
                if records is None:
                    parse_failed = True
                    continue
                staging.add(mapping, item["sha256"], records)
            ledger.inputs.append(
                {
                    "file": item["path"],
                    "sha256": item["sha256"],
                    "raw": item["raw"],
                    "signer": item.get("signer"),
                    "signed_at": item.get("signed_at"),
                    "status": "parse_failed" if parse_failed else "accepted",
                }
            )
            del plaintext
        results = staging.finish() if staging is not None else []
        _account_files(ledger, feed, verified)
        ledger_path = ledger.save(context)
        for item in verified["accepted"]:
            registry.mark(item["sha256"], "accepted")
        _remember_seen(lake, feed, verified)
        _clear_landing(lake, feed, context)
    deviations = _patient_impact_deviations(lake, results)
    staged: dict[str, int] = {}
    for result in results:
        if result.counts.valid:
            staged[result.dataset] = staged.get(result.dataset, 0) + result.counts.valid
    report = {
        "feed": feed,
        "run_id": context.run_id,
        "ledger": ledger_path,
        "results": [r.to_dict() for r in results],
        "deviations": deviations,
    }
    report_path = _write_report(context, feed, "stage", report)
    totals = ledger.totals()
    return {
        "feed": feed,
        "report": report_path,
        "ledger": ledger_path,
        "staged": dict(sorted(staged.items())),
        "received": totals.received,
        "valid": totals.valid,
        "quarantined": totals.quarantined,
        "duplicates": totals.duplicates,
        "quarantine_codes": dict(sorted(ledger.quarantine_codes.items())),
        "files": totals.files,
        "duplicate_files": totals.duplicate_files,
        "rejected_files": len(verified["rejected"]),
        "deviations": len(deviations),
    }


def _account_files(ledger: RunLedger, feed: str, verified: dict[str, Any]) -> None:
    """File-level outcomes: counted under the feed, each duplicate and rejection a finding."""
    accepted, duplicates, rejected = (
        verified["accepted"],
        verified["duplicates"],
        verified["rejected"],
    )
    files = len(accepted) + len(duplicates) + len(rejected)
    ledger.feed(feed).add(FeedCounts(files=files, duplicate_files=len(duplicates)))
    for item in duplicates:
        ledger.findings.append(
            {
                "code": "FILE_DUPLICATE",
                "severity": "info",
                "file": item["path"],
                "sha256": item["sha256"],
                "original": item["original"],
                "message": "the same content was delivered before; registered once",
            }
        )
    for item in rejected:
        ledger.findings.append(
            {
                "code": item["code"],
                "severity": "error",
                "file": item["path"],
                "sha256": item["sha256"],
                "message": item["message"],
            }
        )


def _remember_seen(lake: Lake, feed: str, verified: dict[str, Any]) -> None:
    seen = _load_seen(lake, feed)
    for item in verified["files"]:
        seen[item["path"]] = [item["size"], item["mtime"], item["sha256"]]
    for item in verified["rejected"]:
        if item.get("sha256") is None and "mtime" in item:
            seen[item["path"]] = [item["size"], item["mtime"], None]
    lake.write_json(_seen_path(lake, feed), {"feed": feed, "files": dict(sorted(seen.items()))})


def _clear_landing(lake: Lake, feed: str, context: RunContext) -> None:
    landing = lake.path(f"landing/{feed}/run={context.path_run_id}")
    if landing.exists():
        for item in landing.iterdir():
            item.unlink()
        landing.rmdir()


def _patient_impact_deviations(lake: Lake, results: list[StageResult]) -> list[dict[str, Any]]:
    """Deviations with patient impact among the rows staged in this run (IDs and codes only)."""
    found: dict[str, dict[str, Any]] = {}
    for result in results:
        if result.dataset != DEVIATION_DATASET:
            continue
        for part in result.parts:
            table = lake.read_parquet(lake.path(part))
            for row in table.to_pylist():
                if row.get("patient_impact"):
                    found[row["deviation_id"]] = {
                        "deviation_id": row["deviation_id"],
                        "batch_id": row["batch_id"],
                        "classification": row["classification"],
                        "status": row["status"],
                        "category": row["category"],
                        "opened_at": row["opened_at"].isoformat() if row["opened_at"] else None,
                        "feed": result.feed,
                    }
    return [found[key] for key in sorted(found)]


# --- 4. alert -------------------------------------------------------------------------------------


def deviation_alerts(feed: CmoFeed, deviations: list[dict[str, Any]]) -> list[Alert]:
    return [
        Alert(
            key=f"deviation:{d['deviation_id']}",
            state="raised",
            kind="deviation_patient_impact",
            severity="critical" if d["classification"] == "critical" else "high",
            title=(
                f"{feed.options.cmo} deviation {d['deviation_id']} with patient impact on batch "
                f"{d['batch_id']}"
            ),
            body=(
                f"A {d['classification']} deviation ({d['category']}, {d['status']}) opened "
                f"{d['opened_at']} was delivered by {feed.name}. Review it before the batch is "
                "released or infused."
            ),
        )
        for d in deviations
    ]


def alert_deviations(
    context: RunContext, *, feed: str, notifier: Notifier | None = None
) -> dict[str, Any]:
    """Alert once per new deviation with patient impact staged by this run."""
    config = load_cmo_feed(feed)
    staged = _read_report(context, feed, "stage")
    alerts = deviation_alerts(config, staged["deviations"])
    sent = notify_once(
        notifier or LogNotifier(), AlertRegister(context.lake, f"alerts-{feed}"), alerts
    )
    return {"feed": feed, "deviations": len(alerts), "alerts_sent": sent}


# --- all four -------------------------------------------------------------------------------------


def ingest_cmo_feed(
    context: RunContext,
    *,
    feed: str,
    source: DeliverySource | None = None,
    sftp: Any = None,
    since: datetime | None = None,
    until: datetime | None = None,
    port: IdentityPort | None = None,
    registry: FileRegistry | None = None,
    notifier: Notifier | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Run one CMO feed once: fetch, verify and register, stage, alert (``cmohub cmo ingest``)."""
    fetched = fetch_deliveries(
        context, feed=feed, source=source, sftp=sftp, since=since, until=until, sleep=sleep
    )
    verified = verify_deliveries(context, feed=feed, registry=registry)
    staged = stage_deliveries(context, feed=feed, port=port, registry=registry)
    alerted = alert_deviations(context, feed=feed, notifier=notifier)
    return {"fetch": fetched, "verify": verified, "stage": staged, "alert": alerted}
