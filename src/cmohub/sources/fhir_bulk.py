"""FHIR Bulk Data ``$export``: kick-off, polling with Retry-After, NDJSON download, resume.

Flow (HL7 FHIR Bulk Data Access IG)::

    GET [base]/$export?_type=Patient,ServiceRequest&_since=...   Prefer: respond-async
        -> 202 Accepted, Content-Location: <status URL>
    GET <status URL>   -> 202 (X-Progress, Retry-After) ... -> 200 manifest
                          {"transactionTime", "output": [{"type", "url", "count"}], "error": [...]}
    GET <output url>   -> NDJSON, one resource per line
    DELETE <status URL> (the server may clean up)

Resume: every step is recorded in a :class:`BulkState` the caller persists (the lake, per
feed and run). A run that was interrupted continues where it stopped: it polls the status URL
it already has instead of kicking off again, and skips files it already downloaded (the caller
says which through ``have``). The export's own ``transactionTime`` is kept, so a resumed run
asks for the same data.

Errors: a kick-off or status answer other than 202/200 is a
:class:`~cmohub.errors.SourceError` (``SOURCE_BULK_FAILED``, OperationOutcome codes listed);
an export still running after ``max_polls`` is :class:`~cmohub.errors.SourceUnavailable`
``SOURCE_BULK_PENDING`` (Transient: the task retries later and resumes the same export).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cmohub.errors import HubError, ParseError, SourceError, SourceUnavailable
from cmohub.formats.fhir import describe_outcome, outcome_issues, parse_json
from cmohub.sources.fhir import FhirClient, retry_after_seconds


class StateStore(Protocol):
    """Where an export's progress is kept between attempts."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class MemoryStateStore:
    """A state store in memory (tests; one-off exports)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        return json.loads(json.dumps(self.state)) if self.state is not None else None

    def save(self, state: dict[str, Any]) -> None:
        self.state = json.loads(json.dumps(state))


@dataclass
class BulkState:
    """An export's progress: the status URL, the manifest, the files already fetched."""

    status_url: str | None = None
    kicked_off_at: str | None = None
    manifest: dict[str, Any] | None = None
    downloaded: dict[str, str] = field(default_factory=dict)  # output url -> sha256
    polls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "status_url": self.status_url,
            "kicked_off_at": self.kicked_off_at,
            "manifest": self.manifest,
            "downloaded": dict(sorted(self.downloaded.items())),
            "polls": self.polls,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> BulkState:
        if not data:
            return cls()
        return cls(
            status_url=data.get("status_url"),
            kicked_off_at=data.get("kicked_off_at"),
            manifest=data.get("manifest"),
            downloaded=dict(data.get("downloaded") or {}),
            polls=int(data.get("polls") or 0),
        )


@dataclass(frozen=True)
class BulkFile:
    """One downloaded NDJSON output file (bytes as received)."""

    resource_type: str
    url: str
    data: bytes | None  # None when ``have`` said it was already downloaded
    sha256: str | None = None


class BulkExport:
    """Runs (or resumes) one system-level ``$export`` through a :class:`FhirClient`."""

    def __init__(
        self,
        client: FhirClient,
        state: StateStore,
        *,
        max_polls: int = 120,
        default_wait: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.store = state
        self.max_polls = max_polls
        self.default_wait = default_wait
        self.clock = clock
        self.state = BulkState.from_dict(state.load())

    def _save(self) -> None:
        self.store.save(self.state.to_dict())

    def kick_off(self, types: Sequence[str], since: datetime | None) -> str:
        """Start the export (unless a status URL is already recorded); return the status URL."""
        if self.state.status_url:
            return self.state.status_url
        params = [("_type", ",".join(types)), ("_outputFormat", "application/fhir+ndjson")]
        if since is not None:
            params.append(("_since", since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))
        response = self.client.request(
            "GET",
            "$export",
            params=params,
            headers={"Prefer": "respond-async"},
            accept=(202,),
        )
        location = str(response.headers.get("Content-Location") or "")
        if not location:
            raise SourceError(
                "the $export kick-off answered 202 without Content-Location",
                code="SOURCE_BULK_FAILED",
                where="$export",
            )
        self.state.status_url = location
        self.state.kicked_off_at = self.clock().isoformat()
        self._save()
        return location

    def wait(self) -> dict[str, Any]:
        """Poll the status URL until the manifest is ready (honouring Retry-After)."""
        if self.state.manifest is not None:
            return self.state.manifest
        url = self.state.status_url
        if not url:
            raise SourceError("no export to wait for: kick off first", code="SOURCE_BULK_FAILED")
        for _ in range(self.max_polls):
            response = self.client.request("GET", url, accept=(200, 202))
            self.state.polls += 1
            if response.status_code == 200:
                manifest = self._manifest(response.content)
                self.state.manifest = manifest
                self._save()
                return manifest
            self._save()
            delay = retry_after_seconds(response.headers.get("Retry-After"))
            self.client.sleep(
                min(
                    delay if delay is not None else self.default_wait,
                    self.client.retry.max_wait_seconds,
                )
            )
        raise SourceUnavailable(
            f"the export is still running after {self.max_polls} polls; it resumes on retry",
            code="SOURCE_BULK_PENDING",
        )

    def _manifest(self, data: bytes) -> dict[str, Any]:
        try:
            manifest = parse_json(data)
        except ParseError as error:
            raise SourceError(
                f"the export manifest is not JSON ({error.code})", code="SOURCE_BULK_FAILED"
            ) from None
        issues = outcome_issues(manifest)
        if issues:
            raise SourceError(describe_outcome(issues), code="SOURCE_BULK_FAILED")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
            raise SourceError("the export manifest has no output list", code="SOURCE_BULK_FAILED")
        return manifest

    def files(self, have: Callable[[str, str], bool] | None = None) -> Iterator[BulkFile]:
        """Download each output file; skip those ``have(url, sha256)`` says are kept."""
        manifest = self.wait()
        for item in manifest.get("output") or []:
            if not isinstance(item, dict) or not item.get("url"):
                continue
            url, kind = str(item["url"]), str(item.get("type") or "")
            known = self.state.downloaded.get(url)
            if known and have is not None and have(url, known):
                yield BulkFile(kind, url, None, known)
                continue
            response = self.client.request(
                "GET", url, headers={"Accept": "application/fhir+ndjson"}
            )
            yield BulkFile(kind, url, response.content)

    def mark_downloaded(self, url: str, sha256: str) -> None:
        """Record a file as kept (after the caller stored it durably)."""
        self.state.downloaded[url] = sha256
        self._save()

    def finish(self) -> None:
        """Tell the server the files may go (best effort: a failure here loses nothing)."""
        if self.state.status_url:
            try:
                self.client.request("DELETE", self.state.status_url, accept=(200, 202, 204, 404))
            except HubError:
                return

    @property
    def transaction_time(self) -> str | None:
        manifest = self.state.manifest or {}
        value = manifest.get("transactionTime")
        return str(value) if value else None
