"""Clinical sync: enrollments, FHIR and HL7 v2 into clinical.order / collection / infusion.

Task functions (``clinical_sync`` runs them in this order; each takes a
:class:`~cmohub.pipelines.context.RunContext` and returns a small JSON-ready dict)::

    import_enrollments(context, register=None)        sponsor register -> vault.enroll_many
    sync_fhir(context, endpoint=None, ...)            FHIR REST search or Bulk $export
    sync_hl7(context, inbox=None)                     HL7 inbox files + MLLP spool
    summarize_clinical(context)                       the run's counts; the DAG's Asset outlet

and, for files at hand (CLI, tests): :func:`ingest_fhir_files`, :func:`ingest_hl7_files`.

Identity at the door: patient identifiers reach no further than this module. A resource's or
message's subject (resolved by the format adapter into ``_subject`` / ``ZSI``) goes through
the mapping's ``tokenize`` action to the vault, which answers with the COI the sponsor's
enrollment issued for the therapy event; rows carry that COI and nothing else. Linkage
demographics are compared by the vault and dropped; mismatches and COIs the vault had to
allocate (a therapy event the register did not hold) are reported as findings — counts and
codes only.

Feeds: every shipped mapping named ``clinical-fhir-*`` / ``clinical-hl7-*`` is a feed (adding
one is writing a mapping). Records no mapping feed takes (unknown resource types, messages of
other types, ADT updates and merges) belong to the intake feeds ``clinical-fhir`` and
``clinical-hl7``. Every record ends staged, quarantined (with a code) or suppressed as a
duplicate, per feed, and the ledger checks that the counts add up.

Window (FHIR): ``_lastUpdated`` from ``min(cursor, interval start) - lookback`` (no cursor: the
whole history) to the interval's end. The window a run used is recorded, so a rerun of the
same run fetches the same set; the cursor advances to the interval end after success and
never moves back. Resources and messages seen by an earlier run (same version / same sending
application and control ID) are duplicates.

Raw payloads (pages, bulk files, HL7 files, MLLP messages, the enrollment register) are kept
only encrypted (:mod:`cmohub.sources.raw_clinical`), or not at all with
``CMOHUB_RAW_CLINICAL=none``. Source references read ``<batch manifest sha256>#input=<n>/
<locator>``: the manifest names the payload, the payload the record.

Quarantine replay (:func:`restage_quarantined`, called by :mod:`cmohub.pipelines.replay`):
the same intake classes stage a replay, given a :class:`Reentry` — the original run's batch
manifest and the quarantined locators of one mapping feed. The intake reads that batch again
from the encrypted store (no new manifest, no file registration: a replay is not a
delivery), so re-quarantined records keep naming the same manifest and input numbers, and
only the selected records reach :func:`_stage_feed` (mapping, vault screening, tokenizing,
contract), under the replay's run. What becomes of the intake's per-run state:

* patient index (FHIR): rebuilt from *every* payload of the original batch, as the run built
  it (a record's Patient may have come in another page, or the ``Patient`` reads of
  unresolved subjects); the subject policy is that of every FHIR mapping, as in a sync.
* message routing (HL7): the batch's messages are routed again by the *current* mappings'
  message types; a selected message no longer routed to the feed is REPLAY_RECORD_NOT_FOUND.
  ADT updates and merges belong to the intake feed ``clinical-hl7`` and are not applied
  again (the run applied them, or quarantined them there).
* duplicate registry (:class:`~cmohub.sources.seen.SeenRegistry`): a replay claims the
  selected records' keys *for the root run* of the replay chain (``Reentry.claim_as``),
  not for itself. A key the run claimed is the run's own, so a record is never refused as a
  duplicate of itself; a key the run could not claim (an HL7 message it could not parse) is
  claimed for it now, unless another run claimed it since — the sender re-sent the message
  and that run staged it — and then the replayed record is counted a duplicate, not staged
  twice. Nothing is claimed for ``replay-*`` runs, so later incremental syncs see exactly
  the keys they would have seen without the replay, and suppress the same versions.
* the sync's window, cursor and Bulk state are not read or moved: a replay fetches nothing.

The replay chain (one replay reads the previous one's quarantine) keeps a record from being
staged twice by replays; the registry above keeps it from being staged by a replay and a
later run.

Error codes raised here: ``CLINICAL_ENROLLMENTS_MISSING``, ``CLINICAL_NO_FHIR_ENDPOINT``
(ConfigError), ``CLINICAL_FHIR_MODE`` (ConfigError), ``RAW_NOT_KEPT`` and
``REPLAY_UNSUPPORTED`` (ConfigError, replay).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from upath import UPath

from cmohub.contracts.arrow import rows_to_table
from cmohub.contracts.model import Severity
from cmohub.contracts.quarantine import write_quarantine
from cmohub.contracts.report import QuarantineEntry, Reason, SourceRef
from cmohub.errors import ConfigError, ParseError, VaultError
from cmohub.formats.fhir import (
    FhirEntry,
    FhirVersion,
    PatientIndex,
    check_resource,
    parse_payload,
    prepare_record,
    subject_reference,
)
from cmohub.formats.hl7v2 import (
    MessageKind,
    MessageRecords,
    RawMessage,
    message_records,
    peek_header,
    split_messages,
    subject_of,
)
from cmohub.formats.records import (
    RECORD_MALFORMED,
    FormatProblem,
    SubjectFields,
    SubjectPolicy,
)
from cmohub.identifiers import Coi
from cmohub.identity import Actor, CoiStatus, SubjectIdentity, TokenizeRequest
from cmohub.lake import Lake, sha256_hex
from cmohub.log import get_logger
from cmohub.mapping.engine import (
    MappedRow,
    MappingIssue,
    MappingResult,
    PendingTokenize,
    RejectedRecord,
    apply_mapping,
)
from cmohub.mapping.identity import resolve_identities
from cmohub.mapping.readers import SourceRecord
from cmohub.mapping.spec import CompiledMapping, MappingSpec, compile_mapping
from cmohub.mapping.store import load_mappings
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.ledger import FeedCounts, RunLedger
from cmohub.pipelines.selection import RecordSelection
from cmohub.pipelines.stage import FeedStager, StageResult
from cmohub.pipelines.state import load_cursor, save_cursor
from cmohub.sensitive import Sensitive
from cmohub.sources.auth import auth_for
from cmohub.sources.endpoint import EndpointLike, SourceEndpoint
from cmohub.sources.fhir import FhirClient, RetryPolicy, SearchWindow
from cmohub.sources.fhir_bulk import BulkExport
from cmohub.sources.hl7 import Hl7Input, MllpSpool, iter_inbox
from cmohub.sources.raw_clinical import (
    BatchManifest,
    RawClinicalStore,
    input_locator,
    split_input_locator,
)
from cmohub.sources.registry import FileRegistry
from cmohub.sources.seen import SeenRegistry
from cmohub.vault import SYSTEMS_FILE, Vault, key_provider_for, open_vault
from cmohub.vault.enrollment import load_enrollments
from cmohub.vault.normalize import SystemRegistry, load_systems, normalize_event

log = get_logger("cmohub.pipelines.clinical")

FHIR_PREFIX = "clinical-fhir-"
HL7_PREFIX = "clinical-hl7-"
FHIR_INTAKE = "clinical-fhir"
HL7_INTAKE = "clinical-hl7"
ENROLLMENT_FEED = "clinical-enrollments"
#: Codes that reject a record for what it is rather than how it is written.
_NOT_MALFORMED = frozenset({"PARSE_HL7_UNSUPPORTED"})
DEFAULT_LOOKBACK = timedelta(hours=1)
DEFAULT_PAGE_SIZE = 100


# --- shared plumbing ----------------------------------------------------------------------------


class LinkagePort:
    """The vault as an IdentityPort that also counts linkage mismatches and new COIs."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.mismatched_records = 0
        self.mismatched_fields: Counter[str] = Counter()
        self.new_cois = 0

    def tokenize_many(self, requests: Sequence[TokenizeRequest], *, actor: Actor) -> list[Coi]:
        result = self.vault.tokenize_many_detailed(requests, actor=actor)
        self.new_cois += result.new_count
        self.mismatched_records += len(result.linkage_mismatches)
        for mismatch in result.linkage_mismatches:
            self.mismatched_fields.update(mismatch.fields)
        return result.cois

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        return self.vault.verify_many(cois, actor=actor)

    def findings(self, feed: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.mismatched_records:
            fields = ", ".join(f"{k} {v}" for k, v in sorted(self.mismatched_fields.items()))
            out.append(
                {
                    "code": "IDENTITY_LINKAGE_MISMATCH",
                    "severity": Severity.WARNING.value,
                    "feed": feed,
                    "count": self.mismatched_records,
                    "message": f"{self.mismatched_records} record(s) arrived with demographics "
                    f"that differ from the vault's for their identifier (fields: {fields})",
                }
            )
        if self.new_cois:
            out.append(
                {
                    "code": "IDENTITY_NEW_COI",
                    "severity": Severity.WARNING.value,
                    "feed": feed,
                    "count": self.new_cois,
                    "message": f"{self.new_cois} subject/therapy event pair(s) were not in the "
                    "enrollment register: the vault allocated new COIs",
                }
            )
        return out


@dataclass
class _Hub:
    """What every clinical task opens: settings-derived stores, the vault, registries."""

    context: RunContext
    vault: Vault
    raw: RawClinicalStore
    files: FileRegistry
    seen: SeenRegistry
    systems: SystemRegistry
    owns_vault: bool = True

    @property
    def lake(self) -> Lake:
        return self.context.lake

    @classmethod
    def open(cls, context: RunContext, *, vault: Vault | None = None) -> _Hub:
        """Open what the settings name; ``vault``: one the caller opened (and will close)."""
        settings = context.settings
        return cls(
            context=context,
            vault=vault if vault is not None else open_vault(settings),
            raw=RawClinicalStore(
                context.lake, key_provider_for(settings), policy=settings.raw_clinical
            ),
            files=FileRegistry.from_url(settings.hub_database_url),
            seen=SeenRegistry.from_url(settings.hub_database_url),
            systems=load_systems(settings.home_dir / SYSTEMS_FILE),
            owns_vault=vault is None,
        )

    def close(self) -> None:
        if self.owns_vault:
            self.vault.close()
        self.seen.dispose()

    def kept_inputs(
        self, manifest: Mapping[str, Any], only: Iterable[int] | None = None
    ) -> Iterator[tuple[int, dict[str, Any], bytes]]:
        """The payloads of a kept batch (``only`` those numbers), decrypted one at a time:
        (input number, its manifest item, plaintext). RAW_NOT_KEPT when a payload is not in
        the lake."""
        wanted = set(only) if only is not None else None
        for number, item in enumerate(manifest["inputs"], start=1):
            if wanted is None or number in wanted:
                yield number, item, self.raw.get(str(item["sha256"]))


@dataclass
class Reentry:
    """A quarantine replay's way back into the intake: which records of which batch.

    ``select`` holds the quarantined records of ``feed`` by locator (``input=<n>/entry=<k>``,
    ``input=<n>/message=<m>`` for a whole message, ``input=<n>/message=<m>/ORC=<k>``; a
    message's locator selects each of its records) in the batch ``manifest_sha``
    (``manifest``: as loaded, read once by the replay). ``claim_as`` is the run the records'
    duplicate keys are claimed for: the root of the replay chain (see "Quarantine replay" in
    the module doc).
    """

    feed: str
    manifest_sha: str
    manifest: Mapping[str, Any]
    select: RecordSelection
    claim_as: str
    #: Quarantine entries (of a dataset) for locators no record answered: the replay's.
    on_missing: Callable[[str, list[str]], list[QuarantineEntry]]

    @property
    def inputs(self) -> set[int]:
        """The batch's input numbers that hold selected records."""
        return {split_input_locator(x)[0] for x in self.select.locators}

    def not_found(self, dataset: str) -> list[QuarantineEntry]:
        return self.on_missing(dataset, self.select.missing())


def _resource_id(entry: Any) -> str | None:
    """The FHIR resource's logical ID, when the entry has one (never an identifier of a person)."""
    resource = getattr(entry, "resource", None)
    value = resource.get("id") if isinstance(resource, dict) else None
    return value if isinstance(value, str) else None


def _malformed_entry(
    dataset: str, manifest_sha: str, locator: str, problem: FormatProblem, rule: str
) -> QuarantineEntry:
    reasons: tuple[Reason, ...]
    if problem.malformed and problem.code not in _NOT_MALFORMED:
        reasons = (
            Reason(RECORD_MALFORMED, rule, None),
            Reason(problem.code, rule, problem.where),
        )
    else:
        reasons = (Reason(problem.code, rule, problem.where),)
    return QuarantineEntry(dataset, SourceRef(manifest_sha, locator), reasons, key=problem.key)


def _screen_identities(result: MappingResult, systems: SystemRegistry) -> MappingResult:
    """Reject rows whose subject the vault would refuse (unknown system, bad value or event)
    before the batch reaches it: one bad record must not fail the whole delivery."""
    rows: list[MappedRow] = []
    rejected: list[RejectedRecord] = list(result.rejected)
    for row in result.rows:
        problem: MappingIssue | None = None
        for name, value in row.values.items():
            if not isinstance(value, PendingTokenize):
                continue
            request = value.request
            try:
                systems.policy(request.identity.system).normalize(request.identity.value.reveal())
                normalize_event(request.therapy_event)
            except VaultError as error:
                problem = MappingIssue(
                    error.code,
                    Severity.ERROR,
                    row.locator,
                    name,
                    None,
                    "the vault does not accept this subject identity (system, value or event)",
                )
                break
        if problem is None:
            rows.append(row)
        else:
            rejected.append(RejectedRecord(row.locator, (*row.warnings, problem)))
    return replace(result, rows=tuple(rows), rejected=tuple(rejected))


@dataclass
class _Rejections:
    """Records of an intake feed (no mapping takes them): why each was refused."""

    rejected: list[tuple[str, FormatProblem]] = field(default_factory=list)  # locator, why
    duplicates: int = 0


@dataclass
class _FeedBatch:
    """One feed's records of one run, gathered from any number of payloads."""

    spec: MappingSpec
    compiled: CompiledMapping
    records: list[SourceRecord] = field(default_factory=list)
    rejected: list[tuple[str, FormatProblem]] = field(default_factory=list)  # locator, why
    duplicates: int = 0
    outside_window: int = 0
    #: Quarantine entries made before mapping by a replay (records its payload no longer holds).
    upstream: list[QuarantineEntry] = field(default_factory=list)

    @property
    def feed(self) -> str:
        return self.spec.name

    @property
    def received(self) -> int:
        return len(self.records) + len(self.rejected) + self.duplicates + len(self.upstream)


def _stage_feed(
    hub: _Hub,
    ledger: RunLedger,
    batch: _FeedBatch,
    manifest_sha: str,
    *,
    port: LinkagePort,
    rule: str,
) -> StageResult:
    """Map, screen, resolve, validate and stage one feed's batch (one staging step)."""
    context = hub.context
    stager = FeedStager(context, batch.compiled, port=port, ledger=ledger)
    upstream = [
        *batch.upstream,
        *(
            _malformed_entry(batch.spec.dataset, manifest_sha, locator, problem, rule)
            for locator, problem in batch.rejected
        ),
    ]
    mapped = apply_mapping(
        batch.compiled, batch.records, run_id=context.path_run_id, source_sha256=manifest_sha
    )
    mapped = _screen_identities(mapped, hub.systems)
    mapped = resolve_identities(mapped, port, actor=context.actor(batch.feed))
    table = rows_to_table(mapped.canonical_rows(), stager.contract)
    # The part is named per feed and run (not by the payloads' hash, which changes when a
    # server renders the same resources into different pages): a retry rewrites it.
    part_key = sha256_hex(f"{batch.feed}\x00{context.path_run_id}".encode())
    stager.stage_table(
        part_key,
        table,
        upstream=[*upstream, *mapped.quarantine_entries(stager.key_fields)],
        upstream_duplicates=batch.duplicates,
    )
    return stager.finish()


def _feed_summary(result: StageResult, batch: _FeedBatch) -> dict[str, Any]:
    summary = result.to_dict()
    summary.pop("findings", None)
    summary["outside_window"] = batch.outside_window
    return summary


def _mapping_feeds(prefix: str, names: Sequence[str] | None) -> list[MappingSpec]:
    specs = load_mappings()
    chosen = [s for name, s in sorted(specs.items()) if name.startswith(prefix)]
    if names is not None:
        wanted = set(names)
        unknown = wanted - {s.name for s in chosen}
        if unknown:
            raise ConfigError(
                f"no clinical mapping named {', '.join(sorted(unknown))}", code="CONFIG_INVALID"
            )
        chosen = [s for s in chosen if s.name in wanted]
    return chosen


def _policy(specs: Iterable[MappingSpec]) -> SubjectPolicy:
    systems: list[str] = []
    authorities: dict[str, str] = {}
    for spec in specs:
        policy = SubjectPolicy.from_options(dict(spec.source.options), where=spec.name)
        systems.extend(s for s in policy.systems if s not in systems)
        authorities.update(dict(policy.authorities))
    return SubjectPolicy(tuple(systems), tuple(sorted(authorities.items())))


def _finish_ledger(hub: _Hub, ledger: RunLedger, findings: list[dict[str, Any]]) -> str:
    ledger.findings.extend(findings)
    return ledger.save(hub.context)


# --- enrollments -------------------------------------------------------------------------------


def _read_location(location: str) -> bytes:
    path = UPath(location)
    try:
        return bytes(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            "the enrollment register is missing (set CMOHUB_ENROLLMENTS, or generate the "
            "sandbox program)",
            code="CLINICAL_ENROLLMENTS_MISSING",
            where=location,
        ) from None


def import_enrollments(context: RunContext, *, register: str | None = None) -> dict[str, Any]:
    """Adopt the COIs of the sponsor's enrollment register (idempotent; all or nothing)."""
    location = register or context.settings.enrollments_location
    data = _read_location(location)
    hub = _Hub.open(context)
    try:
        ledger = RunLedger("import_enrollments")
        sha256, _ = hub.raw.put(data)
        assignments = load_enrollments(data.decode("utf-8").splitlines())
        result = hub.vault.enroll_many(assignments, actor=context.actor(ENROLLMENT_FEED))
        counts = ledger.feed(ENROLLMENT_FEED)
        counts.add(FeedCounts(received=len(assignments), valid=len(assignments), files=1))
        ledger.inputs.append({"feed": ENROLLMENT_FEED, "sha256": sha256, "kind": "enrollments"})
        path = _finish_ledger(hub, ledger, [])
    finally:
        hub.close()
    log.info(
        "enrollments: %d assignments, %d new, %d already known",
        len(assignments),
        result.enrolled,
        result.already,
    )
    return {
        "task": "import_enrollments",
        "assignments": len(assignments),
        "enrolled": result.enrolled,
        "already": result.already,
        "ledger": path,
    }


# --- FHIR --------------------------------------------------------------------------------------


def _resource_key(resource: Mapping[str, Any]) -> str | None:
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        return None
    meta = resource.get("meta") if isinstance(resource.get("meta"), Mapping) else {}
    version = meta.get("versionId") or meta.get("lastUpdated")  # type: ignore[union-attr]
    if not version:
        version = json.dumps(resource, sort_keys=True)
    return f"{resource.get('resourceType')}/{resource_id}/_history/{version}"


#: How each kind of kept FHIR payload was parsed (``ndjson``), to read it again the same way.
_NDJSON_BY_KIND: dict[str, bool | None] = {
    "fhir-page": False,
    "fhir-patients": False,
    "fhir-bulk": True,
    "fhir-file": None,
}


class FhirIntake:
    """Collects FHIR payloads of one run (pages, bulk files, local files) and stages them.

    With a :class:`Reentry` (a quarantine replay), it reads the original run's batch again
    instead (:meth:`reenter`) and stages only the selected records of the reentry's feed.
    """

    def __init__(
        self,
        hub: _Hub,
        *,
        feeds: Sequence[str] | None = None,
        version: FhirVersion | None = None,
        window: SearchWindow | None = None,
        reentry: Reentry | None = None,
    ) -> None:
        self.hub = hub
        self.specs = _mapping_feeds(FHIR_PREFIX, feeds)
        self.version = version
        self.window = window
        self.reentry = reentry
        self.policy = _policy(self.specs)
        patient_version = version or (self.version_for(self.specs[0]) if self.specs else None)
        self.patients = PatientIndex(self.policy, patient_version or FhirVersion.R4)
        self.manifest = BatchManifest(
            FHIR_INTAKE, hub.context.path_run_id, fhir_version=version.value if version else None
        )
        self.by_type: dict[str, list[tuple[int, FhirEntry]]] = {}
        self.payload_problems: list[tuple[str, FormatProblem]] = []
        self.outcomes: list[dict[str, Any]] = []
        self.results: dict[str, StageResult] = {}

    @property
    def resource_types(self) -> list[str]:
        return sorted({s.source.resource_type for s in self.specs if s.source.resource_type})

    def version_for(self, spec: MappingSpec) -> FhirVersion:
        if self.version is not None:
            return self.version
        return FhirVersion.parse(dict(spec.source.options).get("fhir_version"))

    def add_payload(
        self, data: bytes, *, source: str, kind: str, ndjson: bool | None = None
    ) -> None:
        """Keep one payload (encrypted) and collect its entries."""
        sha256, _ = self.hub.raw.put(data)
        number = self.manifest.add(sha256, source=source, kind=kind)
        self._collect(number, data, ndjson=ndjson)

    def reenter(self) -> None:
        """Collect the reentry's batch again, every payload of it: the Patients of the whole
        run are the subjects' identity context, as they were for the run."""
        assert self.reentry is not None
        for number, item, data in self.hub.kept_inputs(self.reentry.manifest):
            self._collect(number, data, ndjson=_NDJSON_BY_KIND.get(str(item.get("kind"))))

    def _collect(self, number: int, data: bytes, *, ndjson: bool | None) -> None:
        """Index the payload's Patients and collect its entries by resource type."""
        try:
            payload = parse_payload(data, ndjson=ndjson)
        except ParseError as error:
            self.payload_problems.append(
                (
                    input_locator(number, "payload"),
                    FormatProblem(error.code, error.message, error.where),
                )
            )
            return
        for entry in payload.entries:
            kind_of = entry.resource_type
            if kind_of == "Patient":
                # Patients are the subjects' identity context, not records of a feed: their
                # identifiers and demographics go to the vault with the resources naming them.
                self.patients.add(entry.resource or {}, entry.full_url)
                if "Patient" not in self.resource_types:
                    continue
            if entry.mode == "outcome" or kind_of == "OperationOutcome":
                self.outcomes.append({"input": number, "locator": entry.locator})
                if entry.mode == "outcome":
                    continue
            self.by_type.setdefault(kind_of or "", []).append((number, entry))

    def unresolved_subjects(self) -> list[str]:
        """Patient ids referenced by collected resources but not returned (no _include)."""
        wanted: set[str] = set()
        for spec in self.specs:
            for _, entry in self.by_type.get(spec.source.resource_type or "", []):
                reference = subject_reference(entry.resource or {})
                target = reference.get("reference") if reference else None
                if (
                    isinstance(target, str)
                    and target.startswith("Patient/")
                    and target not in self.patients
                ):
                    wanted.add(target.split("/", 1)[1].split("/", 1)[0])
        return sorted(wanted)

    def _batches(self) -> tuple[list[_FeedBatch], _Rejections]:
        hub = self.hub
        reentry = self.reentry
        run_id = reentry.claim_as if reentry else hub.context.path_run_id
        batches: list[_FeedBatch] = []
        for spec in self.specs:
            entries = self.by_type.pop(spec.source.resource_type or "", [])
            if reentry is not None:
                if spec.name != reentry.feed:
                    continue
                take = reentry.select.take
                entries = [(n, e) for n, e in entries if take(input_locator(n, e.locator))]
            batch = _FeedBatch(spec, compile_mapping(spec))
            version = self.version_for(spec)
            kept: list[tuple[int, FhirEntry]] = []
            for number, entry in entries:
                meta = (entry.resource or {}).get("meta")
                updated = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
                if self.window is not None and not self.window.contains(
                    updated if isinstance(updated, str) else None
                ):
                    batch.outside_window += 1
                    continue
                kept.append((number, entry))
            keys = [_resource_key(e.resource) if e.resource else None for _, e in kept]
            claimable = [k for k in keys if k is not None]
            fresh = iter(hub.seen.claim(spec.name, claimable, run_id=run_id))
            for (number, entry), key in zip(kept, keys, strict=True):
                if key is not None and not next(fresh):
                    batch.duplicates += 1
                    continue
                locator = input_locator(number, entry.locator)
                outcome = prepare_record(entry, self.patients, version)
                if isinstance(outcome, FormatProblem):
                    batch.rejected.append((locator, outcome.keyed(id=_resource_id(entry))))
                else:
                    batch.records.append(SourceRecord(locator, outcome))
            batches.append(batch)
        intake = _Rejections()
        if reentry is not None:  # the intake feed's records are not replayed
            self.by_type.clear()
            return batches, intake
        for locator, problem in self.payload_problems:
            intake.rejected.append((locator, problem))
        for kind_of, entries in sorted(self.by_type.items()):
            for number, entry in entries:
                locator = input_locator(number, entry.locator)
                if entry.problem is not None:
                    intake.rejected.append((locator, entry.problem))
                elif not kind_of:
                    intake.rejected.append(
                        (locator, FormatProblem("PARSE_FHIR_RESOURCE_TYPE", "no resourceType"))
                    )
                elif (
                    invalid := check_resource(entry.resource, self.version or FhirVersion.R4)
                ) is not None:
                    # malformed first, then unmapped
                    intake.rejected.append((locator, invalid.keyed(id=_resource_id(entry))))
                else:
                    intake.rejected.append(
                        (
                            locator,
                            FormatProblem(
                                "FHIR_RESOURCE_UNMAPPED",
                                f"no clinical mapping takes {kind_of} resources",
                                "resourceType",
                            ),
                        )
                    )
        self.by_type.clear()
        return batches, intake

    def stage(self, ledger: RunLedger) -> dict[str, Any]:
        """Stage every feed's batch; intake rejections go to the ``clinical-fhir`` feed.

        With a reentry: only its feed, from its batch (no new manifest), always (a replay
        writes its counts even when nothing is found).
        """
        hub = self.hub
        reentry = self.reentry
        if reentry is None:
            manifest_sha = self.manifest.save(hub.lake)
            ledger.inputs.append(
                {
                    "feed": FHIR_INTAKE,
                    "manifest": manifest_sha,
                    "payloads": len(self.manifest.inputs),
                }
            )
        else:
            manifest_sha = reentry.manifest_sha
            ledger.inputs.append({"feed": FHIR_INTAKE, "manifest": manifest_sha, "replay": True})
        batches, intake = self._batches()
        port = LinkagePort(hub.vault)
        feeds: dict[str, Any] = {}
        findings: list[dict[str, Any]] = []
        for batch in batches:
            if reentry is not None:
                batch.upstream.extend(reentry.not_found(batch.spec.dataset))
            elif not batch.received:
                continue  # nothing arrived for this feed: no empty report, no validation
            result = _stage_feed(
                hub, ledger, batch, manifest_sha, port=port, rule=f"format:fhir:{batch.feed}"
            )
            self.results[batch.feed] = result
            feeds[batch.feed] = _feed_summary(result, batch)
            findings.extend(port.findings(batch.feed))
            port.mismatched_records = port.new_cois = 0
            port.mismatched_fields.clear()
        if intake.rejected:
            feeds[FHIR_INTAKE] = _quarantine_intake(
                hub, ledger, FHIR_INTAKE, intake, manifest_sha=manifest_sha, rule="format:fhir"
            )
        if self.outcomes and reentry is None:
            findings.append(
                {
                    "code": "FHIR_OPERATION_OUTCOME",
                    "severity": Severity.WARNING.value,
                    "feed": FHIR_INTAKE,
                    "count": len(self.outcomes),
                    "message": f"{len(self.outcomes)} OperationOutcome(s) came with the data",
                }
            )
        ledger.findings.extend(findings)
        return {"manifest": manifest_sha, "feeds": feeds, "patients": len(self.patients)}


def _quarantine_intake(
    hub: _Hub,
    ledger: RunLedger,
    feed: str,
    batch: _Rejections,
    *,
    manifest_sha: str,
    rule: str,
    valid: int = 0,
    extra_entries: Sequence[QuarantineEntry] = (),
) -> dict[str, Any]:
    """Write an intake feed's quarantine (records no mapping took) and count it."""
    context = hub.context
    entries = [
        _malformed_entry("clinical.intake", manifest_sha, locator, problem, rule)
        for locator, problem in batch.rejected
    ]
    entries.extend(extra_entries)
    path = write_quarantine(
        hub.lake, entries, feed=feed, day=context.day, run_id=context.path_run_id
    )
    counts = FeedCounts(
        received=len(entries) + batch.duplicates + valid,
        valid=valid,
        quarantined=len(entries),
        duplicates=batch.duplicates,
    )
    ledger.feed(feed).add(counts)
    ledger.count_quarantine(e.code for e in entries)
    return {
        "feed": feed,
        "received": counts.received,
        "valid": counts.valid,
        "quarantined": counts.quarantined,
        "duplicates": counts.duplicates,
        "quarantine": str(path.relative_to(hub.lake.root)) if path is not None else None,
        "codes": dict(Counter(e.code for e in entries)),
    }


def _window(context: RunContext, feed: str, lookback: timedelta) -> SearchWindow:
    """The run's ``_lastUpdated`` window: recorded for this run, or computed and recorded."""
    lake = context.lake
    path = lake.state_path(feed, f"window-{context.path_run_id}")
    if path.exists():
        data = lake.read_json(path)
        recorded = datetime.fromisoformat(data["since"]) if data.get("since") else None
        return SearchWindow(recorded, datetime.fromisoformat(data["until"]))
    cursor = load_cursor(lake, feed)
    until = context.interval_end.astimezone(UTC)
    since: datetime | None = None
    if cursor is not None:
        since = min(cursor, context.interval_start).astimezone(UTC) - lookback
    lake.write_json(
        path,
        {
            "feed": feed,
            "run_id": context.run_id,
            "since": since.isoformat() if since else None,
            "until": until.isoformat(),
        },
    )
    return SearchWindow(since, until)


class _LakeState:
    """A Bulk Data export's progress, kept in the lake per feed and run (resume)."""

    def __init__(self, lake: Lake, feed: str, name: str) -> None:
        self.lake = lake
        self.path = lake.state_path(feed, name)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        data: dict[str, Any] = self.lake.read_json(self.path)
        return data

    def save(self, state: dict[str, Any]) -> None:
        self.lake.write_json(self.path, state)


def _http_client(
    endpoint: EndpointLike,
    transport: httpx.BaseTransport | None,
    timeout: float,
) -> httpx.Client:
    extra = dict(endpoint.extra or {})
    mode = str(extra.get("auth") or ("bearer" if endpoint.password else "none"))
    if mode == "smart" and not extra.get("token_url"):
        with httpx.Client(transport=transport, timeout=timeout) as probe:
            try:
                answer = probe.get(
                    f"{endpoint.base_url.rstrip('/')}/.well-known/smart-configuration"
                )
                token_url = (
                    answer.json().get("token_endpoint") if answer.status_code == 200 else None
                )
            except (httpx.HTTPError, ValueError):
                token_url = None
        if token_url:
            extra["token_url"] = token_url
    auth = auth_for(
        mode=mode,
        base_url=endpoint.base_url,
        login=endpoint.login,
        password=endpoint.password,
        extra=extra,
    )
    return httpx.Client(
        transport=transport, auth=auth, timeout=httpx.Timeout(timeout), follow_redirects=False
    )


def sync_fhir(
    context: RunContext,
    *,
    endpoint: EndpointLike | None = None,
    mode: str | None = None,
    feeds: Sequence[str] | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    lookback_seconds: float | None = None,
    page_size: int | None = None,
) -> dict[str, Any]:
    """Fetch the run's window from the FHIR server and stage every clinical FHIR feed.

    ``endpoint`` None: the embedded default, a sandbox FHIR server on loopback serving the
    sandbox program (``CMOHUB_SANDBOX_DIR``). Endpoint ``extra``: ``fhir_version`` (R4/R5),
    ``mode`` (``search`` or ``bulk``), ``auth`` (none/bearer/api_key/oauth2/smart, see
    :func:`cmohub.sources.auth.auth_for`), ``page_size``, ``lookback_seconds``, ``timeout``.
    """
    with ExitStack() as stack:
        if endpoint is None:
            endpoint = _embedded_endpoint(context, stack)
        extra = dict(endpoint.extra or {})
        chosen_mode = str(mode or extra.get("mode") or "search").lower()
        if chosen_mode not in ("search", "bulk"):
            raise ConfigError("FHIR mode must be search or bulk", code="CLINICAL_FHIR_MODE")
        version = (
            FhirVersion.parse(extra.get("fhir_version")) if extra.get("fhir_version") else None
        )
        lookback = timedelta(
            seconds=float(
                lookback_seconds
                if lookback_seconds is not None
                else extra.get("lookback_seconds", DEFAULT_LOOKBACK.total_seconds())
            )
        )
        count = int(page_size or extra.get("page_size") or DEFAULT_PAGE_SIZE)
        http = stack.enter_context(
            _http_client(endpoint, transport, float(extra.get("timeout", 30.0)))
        )
        client = FhirClient(
            http,
            endpoint.base_url,
            version=version or FhirVersion.R4,
            retry=RetryPolicy.for_fhir(sleep=sleep),
        )
        hub = _Hub.open(context)
        stack.callback(hub.close)
        window = _window(context, FHIR_INTAKE, lookback)
        intake = FhirIntake(hub, feeds=feeds, version=version, window=window)
        ledger = RunLedger("sync_fhir")
        if chosen_mode == "search":
            _fetch_search(intake, client, window, count)
        else:
            _fetch_bulk(intake, client, window, context)
        missing = intake.unresolved_subjects()
        if missing:
            for page in client.read_patients(missing):
                intake.add_payload(
                    page.data,
                    source=f"Patient page {page.number}",
                    kind="fhir-patients",
                    ndjson=False,
                )
        staged = intake.stage(ledger)
        path = _finish_ledger(hub, ledger, [])
        save_cursor(context.lake, FHIR_INTAKE, window.until, run_id=context.run_id)
    summary = ledger.summary()
    log.info(
        "FHIR sync (%s): %d received, %d staged, %d quarantined, %d duplicates",
        chosen_mode,
        summary["received"],
        summary["valid"],
        summary["quarantined"],
        summary["duplicates"],
    )
    return {
        **summary,
        "task": "sync_fhir",
        "mode": chosen_mode,
        "window": {
            "since": window.since.isoformat() if window.since else None,
            "until": window.until.isoformat(),
        },
        "requests": client.requests,
        "retries": dict(client.retries),
        "feeds": staged["feeds"],
        "ledger": path,
    }


def _embedded_endpoint(context: RunContext, stack: ExitStack) -> SourceEndpoint:
    from cmohub.sandbox.servers.fhir import (  # noqa: PLC0415 - only the embedded default
        FhirSandboxServer,
    )

    program = context.settings.sandbox_root
    if not (program / "clinical" / "fhir").is_dir():
        raise ConfigError(
            "no FHIR endpoint: define the Airflow connection cmohub_fhir (or pass --url), or "
            "generate the sandbox program (cmohub sandbox generate --out "
            f"{program})",
            code="CLINICAL_NO_FHIR_ENDPOINT",
        )
    server = FhirSandboxServer(program, export_retry_after=0)
    stack.enter_context(server.running())
    return SourceEndpoint(server.fhir_base)


def _fetch_search(intake: FhirIntake, client: FhirClient, window: SearchWindow, count: int) -> None:
    for spec in intake.specs:
        resource_type = spec.source.resource_type or ""
        search = dict(spec.source.options).get("search") or {}
        include = search.get("include") if isinstance(search, Mapping) else None
        includes = [include] if isinstance(include, str) else list(include or [])
        for page in client.search(resource_type, window.params(count=count, include=includes)):
            intake.add_payload(
                page.data,
                source=f"{resource_type} page {page.number}",
                kind="fhir-page",
                ndjson=False,
            )


def _fetch_bulk(
    intake: FhirIntake, client: FhirClient, window: SearchWindow, context: RunContext
) -> None:
    hub = intake.hub
    export = BulkExport(
        client,
        _LakeState(context.lake, FHIR_INTAKE, f"bulk-{context.path_run_id}"),
        clock=context.clock,
    )
    export.kick_off(["Patient", *intake.resource_types], window.since)
    for item in export.files(have=lambda url, sha: hub.raw.has(sha)):
        data = item.data if item.data is not None else hub.raw.get(item.sha256 or "")
        intake.add_payload(data, source=f"bulk {item.resource_type}", kind="fhir-bulk", ndjson=True)
        sha256, _ = hub.raw.put(data)
        export.mark_downloaded(item.url, sha256)
    export.finish()


def ingest_fhir_files(
    context: RunContext,
    paths: Sequence[Path],
    *,
    feeds: Sequence[str] | None = None,
    version: FhirVersion | None = None,
) -> dict[str, Any]:
    """Stage FHIR files at hand (Bundles, NDJSON, single resources) like a sync would."""
    hub = _Hub.open(context)
    try:
        intake = FhirIntake(hub, feeds=feeds, version=version)
        ledger = RunLedger("ingest_fhir")
        for path in paths:
            intake.add_payload(Path(path).read_bytes(), source=Path(path).name, kind="fhir-file")
        staged = intake.stage(ledger)
        ledger_path = _finish_ledger(hub, ledger, [])
    finally:
        hub.close()
    return {
        **ledger.summary(),
        "task": "ingest_fhir",
        "feeds": staged["feeds"],
        "ledger": ledger_path,
    }


# --- HL7 v2 ------------------------------------------------------------------------------------


class Hl7Intake:
    """Collects HL7 payloads of one run (inbox files, MLLP spool), routes messages, stages.

    With a :class:`Reentry` (a quarantine replay), it reads the original run's batch again
    instead (:meth:`reenter`), routes its messages with the current mappings and stages only
    the selected records of the reentry's feed; ADT updates and merges (the intake feed's)
    are not applied again.
    """

    def __init__(
        self, hub: _Hub, *, feeds: Sequence[str] | None = None, reentry: Reentry | None = None
    ) -> None:
        self.hub = hub
        self.reentry = reentry
        self.specs = _mapping_feeds(HL7_PREFIX, feeds)
        self.policy = _policy(self.specs)
        self.manifest = BatchManifest(HL7_INTAKE, hub.context.path_run_id)
        self.by_feed: dict[str, list[tuple[int, RawMessage]]] = {s.name: [] for s in self.specs}
        self.intake: list[tuple[int, RawMessage]] = []
        self.payload_problems: list[tuple[str, FormatProblem]] = []
        self.findings: list[dict[str, Any]] = []
        self.files = 0
        self.duplicate_files = 0
        self._pending: list[Hl7Input] = []
        self.results: dict[str, StageResult] = {}
        self._types: dict[tuple[str, str], str] = {}
        for spec in self.specs:
            wanted = dict(spec.source.options).get("message_types") or []
            for item in [wanted] if isinstance(wanted, str) else wanted:
                code, _, trigger = str(item).partition("^")
                self._types[(code, trigger)] = spec.name

    def add_input(self, item: Hl7Input) -> None:
        """Take a payload (file or spooled message); it is admitted with the others at stage."""
        self._pending.append(item)

    def _admit(self) -> None:
        """Keep every pending payload encrypted, register each once (by SHA-256) in one
        transaction, and split the new ones into messages routed to their feeds."""
        hub = self.hub
        context = hub.context
        pending, self._pending = self._pending, []
        if not pending:
            return
        digests = hub.raw.put_many([item.data for item in pending])
        registrations = hub.files.register_many(
            [
                (sha, len(item.data), item.source[:500])
                for sha, item in zip(digests, pending, strict=True)
            ],
            feed=HL7_INTAKE,
            received_at=context.clock(),
            run_id=context.path_run_id,
        )
        for item, sha256, registration in zip(pending, digests, registrations, strict=True):
            self.files += 1
            if not registration.new and registration.first_run_id != context.path_run_id:
                self.duplicate_files += 1
                continue
            number = self.manifest.add(sha256, source=item.source, kind=f"hl7-{item.kind}")
            self._split(number, item.data)

    def reenter(self) -> None:
        """Split the reentry's payloads again (the run registered them; a message is routed
        on its own, so the payloads without a selected record are not needed)."""
        assert self.reentry is not None
        reentry = self.reentry
        for number, _, data in self.hub.kept_inputs(reentry.manifest, reentry.inputs):
            self._split(number, data)

    def _split(self, number: int, data: bytes) -> None:
        try:
            split = split_messages(data)
        except ParseError as error:
            self.payload_problems.append(
                (
                    input_locator(number, "payload"),
                    FormatProblem(error.code, error.message, error.where),
                )
            )
            return
        for finding in split.findings:
            self.findings.append(
                {
                    "code": finding.code,
                    "severity": Severity.WARNING.value,
                    "feed": HL7_INTAKE,
                    "message": f"{finding.message} (input {number})",
                }
            )
        reentry = self.reentry
        for message in split.messages:
            header = peek_header(message.text)
            feed = self._types.get((header.get("message_code", ""), header.get("trigger", "")))
            if reentry is not None:
                # A replay takes its feed's selected messages; ADT and others stay the run's.
                locator = input_locator(number, message.locator)
                if feed == reentry.feed and reentry.select.has(locator):
                    self.by_feed[feed].append((number, message))
                continue
            if feed is not None:
                self.by_feed[feed].append((number, message))
            else:
                self.intake.append((number, message))

    def _read(
        self, items: list[tuple[int, RawMessage]], segment: str | None
    ) -> tuple[list[tuple[str, MessageRecords]], int]:
        """Parse each message; suppress those received before (by MSH-3 + MSH-10).

        Only messages the hub could use claim their key: a broken message sent again, fixed,
        under the same control ID is taken the second time.
        """
        hub = self.hub
        parsed = [
            (
                input_locator(number, raw.locator),
                message_records(
                    raw, segment=segment, policy=self.policy, locator_prefix=f"input={number}/"
                ),
            )
            for number, raw in items
        ]
        keys: list[str | None] = []
        for _, outcome in parsed:
            message = outcome.message
            usable = outcome.problem is None and message is not None
            keys.append("|".join(message.dedupe_key) if usable and message is not None else None)
        claimable = [k for k in keys if k is not None]
        # One control ID is one message across every HL7 feed. A replay claims for its root.
        run_id = self.reentry.claim_as if self.reentry else hub.context.path_run_id
        fresh = iter(hub.seen.claim(HL7_INTAKE, claimable, run_id=run_id))
        kept: list[tuple[str, MessageRecords]] = []
        duplicates = 0
        for item, key in zip(parsed, keys, strict=True):
            if key is not None and not next(fresh):
                # A replay counts each quarantined record the duplicate answers for.
                duplicates += self.reentry.select.take_whole(item[0]) if self.reentry else 1
            else:
                kept.append(item)
        return kept, duplicates

    def _apply_adt(
        self, items: list[tuple[str, MessageRecords]], manifest_sha: str
    ) -> tuple[list[tuple[str, FormatProblem]], list[QuarantineEntry], Counter[str]]:
        """Demographic updates (counted) and merges (through the vault, audited)."""
        hub = self.hub
        context = hub.context
        rejected: list[tuple[str, FormatProblem]] = []
        vault_refusals: list[QuarantineEntry] = []
        applied: Counter[str] = Counter()
        for locator, outcome in items:
            if outcome.problem is not None or outcome.message is None:
                rejected.append(
                    (locator, outcome.problem or FormatProblem("PARSE_HL7_EMPTY", "no message"))
                )
                continue
            message = outcome.message
            if outcome.kind is MessageKind.UPDATE:
                applied["update"] += 1
                continue
            if outcome.kind is MessageKind.MERGE:
                survivor = subject_of(message, self.policy)
                retired = subject_of(message, self.policy, segment="MRG", number=1)
                problem = next(
                    (s for s in (survivor, retired) if isinstance(s, FormatProblem)), None
                )
                if problem is not None:
                    rejected.append((locator, problem))
                    continue
                assert isinstance(survivor, SubjectFields) and isinstance(retired, SubjectFields)
                try:
                    for subject in (survivor, retired):
                        hub.systems.policy(subject.system).normalize(subject.value)
                    hub.vault.merge(
                        SubjectIdentity(survivor.system, Sensitive(survivor.value)),
                        SubjectIdentity(retired.system, Sensitive(retired.value)),
                        actor=context.actor(HL7_INTAKE),
                        reason="HL7 ADT^A40 patient merge",
                    )
                except VaultError as error:
                    vault_refusals.append(
                        QuarantineEntry(
                            "clinical.intake",
                            SourceRef(manifest_sha, locator),
                            (Reason(error.code, "vault:merge", "MRG-1"),),
                        )
                    )
                    continue
                applied["merge"] += 1
                continue
            rejected.append(
                (
                    locator,
                    FormatProblem("PARSE_HL7_UNSUPPORTED", "no feed takes this message", "MSH-9"),
                )
            )
        return rejected, vault_refusals, applied

    def _batch(self, spec: MappingSpec) -> _FeedBatch:
        """One feed's messages, parsed, de-duplicated and split into records (or rejected)."""
        segment = spec.source.segment
        items, duplicates = self._read(self.by_feed.get(spec.name, []), segment)
        batch = _FeedBatch(spec, compile_mapping(spec), duplicates=duplicates)
        reentry = self.reentry
        for locator, outcome in items:
            if reentry is not None and (outcome.problem is not None or not outcome.records):
                reentry.select.take_whole(locator)
            if outcome.problem is not None:
                control = (outcome.header or {}).get("control_id")
                batch.rejected.append((locator, outcome.problem.keyed(control_id=control)))
            elif not outcome.records:
                batch.rejected.append(
                    (
                        locator,
                        FormatProblem(
                            "PARSE_HL7_STRUCTURE", f"the message has no {segment} segment", segment
                        ),
                    )
                )
            elif reentry is not None:  # a replay stages the message's quarantined records
                batch.records.extend(r for r in outcome.records if reentry.select.take(r.locator))
            else:
                batch.records.extend(outcome.records)
        return batch

    def _restage(self, ledger: RunLedger, reentry: Reentry) -> dict[str, Any]:
        """A replay's staging: the reentry's feed only, from its batch, always counted."""
        hub = self.hub
        ledger.inputs.append({"feed": HL7_INTAKE, "manifest": reentry.manifest_sha, "replay": True})
        port = LinkagePort(hub.vault)
        spec = next(s for s in self.specs if s.name == reentry.feed)
        batch = self._batch(spec)
        batch.upstream.extend(reentry.not_found(spec.dataset))
        result = _stage_feed(
            hub, ledger, batch, reentry.manifest_sha, port=port, rule=f"format:hl7v2:{spec.name}"
        )
        self.results[spec.name] = result
        ledger.findings.extend(port.findings(spec.name))
        return {
            "manifest": reentry.manifest_sha,
            "feeds": {spec.name: _feed_summary(result, batch)},
        }

    def stage(self, ledger: RunLedger) -> dict[str, Any]:
        if self.reentry is not None:
            return self._restage(ledger, self.reentry)
        hub = self.hub
        self._admit()
        manifest_sha = self.manifest.save(hub.lake)
        ledger.inputs.append(
            {"feed": HL7_INTAKE, "manifest": manifest_sha, "payloads": len(self.manifest.inputs)}
        )
        port = LinkagePort(hub.vault)
        feeds: dict[str, Any] = {}
        findings = list(self.findings)
        # Identity events first: orders of this run then tokenize against the merged subjects.
        intake_items, intake_duplicates = self._read(self.intake, None)
        rejected, refusals, applied = self._apply_adt(intake_items, manifest_sha)
        for spec in self.specs:
            batch = self._batch(spec)
            if not batch.received:
                continue
            result = _stage_feed(
                hub, ledger, batch, manifest_sha, port=port, rule=f"format:hl7v2:{spec.name}"
            )
            self.results[spec.name] = result
            feeds[spec.name] = _feed_summary(result, batch)
            findings.extend(port.findings(spec.name))
            port.mismatched_records = port.new_cois = 0
            port.mismatched_fields.clear()
        intake = _Rejections([*self.payload_problems, *rejected], intake_duplicates)
        feeds[HL7_INTAKE] = _quarantine_intake(
            hub,
            ledger,
            HL7_INTAKE,
            intake,
            manifest_sha=manifest_sha,
            rule="format:hl7v2",
            valid=sum(applied.values()),
            extra_entries=refusals,
        )
        feeds[HL7_INTAKE]["updates"] = applied["update"]
        feeds[HL7_INTAKE]["merges"] = applied["merge"]
        counts = ledger.feed(HL7_INTAKE)
        counts.files += self.files
        counts.duplicate_files += self.duplicate_files
        ledger.findings.extend(findings)
        return {"manifest": manifest_sha, "feeds": feeds}


def sync_hl7(
    context: RunContext, *, inbox: Path | None = None, include_spool: bool = True
) -> dict[str, Any]:
    """Stage the HL7 v2 inbox (``CMOHUB_HL7_INBOX``) and the MLLP spool."""
    folder = Path(inbox) if inbox is not None else context.settings.hl7_inbox_dir
    hub = _Hub.open(context)
    try:
        intake = Hl7Intake(hub)
        ledger = RunLedger("sync_hl7")
        for item in iter_inbox(folder):
            intake.add_input(item)
        if include_spool and hub.raw.keeps:
            for item in MllpSpool(hub.lake, hub.raw).inputs():
                intake.add_input(item)
        staged = intake.stage(ledger)
        path = _finish_ledger(hub, ledger, [])
    finally:
        hub.close()
    summary = ledger.summary()
    log.info(
        "HL7 sync: %d received, %d staged, %d quarantined, %d duplicates",
        summary["received"],
        summary["valid"],
        summary["quarantined"],
        summary["duplicates"],
    )
    return {**summary, "task": "sync_hl7", "feeds": staged["feeds"], "ledger": path}


def ingest_hl7_files(context: RunContext, paths: Sequence[Path]) -> dict[str, Any]:
    """Stage HL7 files at hand (single messages or batch files) like a sync would."""
    hub = _Hub.open(context)
    try:
        intake = Hl7Intake(hub)
        ledger = RunLedger("ingest_hl7")
        for path in paths:
            intake.add_input(Hl7Input(Path(path).name, "file", Path(path).read_bytes()))
        staged = intake.stage(ledger)
        ledger_path = _finish_ledger(hub, ledger, [])
    finally:
        hub.close()
    return {
        **ledger.summary(),
        "task": "ingest_hl7",
        "feeds": staged["feeds"],
        "ledger": ledger_path,
    }


# --- quarantine replay -------------------------------------------------------------------------


def restage_quarantined(
    context: RunContext,
    reentry: Reentry,
    *,
    ledger: RunLedger,
    vault: Vault | None = None,
) -> StageResult:
    """Stage the quarantined records ``reentry`` selects again, through the intake of their
    feed (FHIR or HL7) with the current mappings, vault and contracts (see "Quarantine
    replay" in the module doc). ``context`` is the replay run's; ``vault``: one the caller
    opened, else the settings' vault is opened and closed here."""
    hub = _Hub.open(context, vault=vault)
    try:
        intake: FhirIntake | Hl7Intake
        if reentry.feed.startswith(FHIR_PREFIX):
            # Read as the run read them: the version it was told, else each mapping's own.
            forced = reentry.manifest.get("fhir_version")
            version = FhirVersion.parse(str(forced)) if forced else None
            intake = FhirIntake(hub, reentry=reentry, version=version)
        elif reentry.feed.startswith(HL7_PREFIX):
            intake = Hl7Intake(hub, reentry=reentry)
        else:
            raise ConfigError(
                f"{reentry.feed} is not a clinical mapping feed", code="REPLAY_UNSUPPORTED"
            )
        if reentry.feed not in {s.name for s in intake.specs}:
            raise ConfigError(
                f"no clinical mapping named {reentry.feed}", code="REPLAY_UNSUPPORTED"
            )
        intake.reenter()
        intake.stage(ledger)
        return intake.results[reentry.feed]
    finally:
        hub.close()


# --- the whole sync ----------------------------------------------------------------------------

TASKS = ("import_enrollments", "sync_fhir", "sync_hl7")


def summarize_clinical(context: RunContext) -> dict[str, Any]:
    """The run's clinical counts from its task ledgers (the Asset's last task)."""
    lake = context.lake
    totals = FeedCounts()
    staged: dict[str, int] = {}
    codes: Counter[str] = Counter()
    found = []
    for task in TASKS:
        path = lake.run_dir(context.path_run_id) / f"{task}.json"
        if not path.exists():
            continue
        found.append(task)
        data = lake.read_json(path)
        for feed, counts in data["counts"].items():
            totals.add(FeedCounts(**counts))
            if feed.startswith((FHIR_PREFIX, HL7_PREFIX)):
                staged[feed] = staged.get(feed, 0) + int(counts["valid"])
        codes.update(data.get("quarantine_codes", {}))
    summary = {
        "task": "summarize_clinical",
        "tasks": found,
        "received": totals.received,
        "valid": totals.valid,
        "quarantined": totals.quarantined,
        "duplicates": totals.duplicates,
        "staged_by_feed": dict(sorted(staged.items())),
        "quarantine_codes": dict(sorted(codes.items())),
    }
    lake.write_json(lake.run_dir(context.path_run_id) / "clinical.json", summary)
    return summary


def sync_clinical(
    context: RunContext,
    *,
    endpoint: EndpointLike | None = None,
    register: str | None = None,
    inbox: Path | None = None,
    mode: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """The whole clinical sync once (the CLI): enrollments, FHIR, HL7, summary."""
    results = {
        "import_enrollments": import_enrollments(context, register=register),
        "sync_fhir": sync_fhir(context, endpoint=endpoint, mode=mode, transport=transport),
        "sync_hl7": sync_hl7(context, inbox=inbox),
    }
    return {**summarize_clinical(context), "results": results}


def iter_clinical_feeds() -> Iterator[MappingSpec]:
    """The clinical mapping feeds (FHIR and HL7), in name order."""
    yield from _mapping_feeds(FHIR_PREFIX, None)
    yield from _mapping_feeds(HL7_PREFIX, None)
