"""FHIR REST source: search with paging, retries that honour Retry-After, typed errors.

The client receives its ``httpx.Client`` (transport, auth and timeouts included) and a paging
strategy; it never builds a session from the environment::

    client = FhirClient(httpx.Client(auth=auth, timeout=30), base_url, version=FhirVersion.R4)
    window = SearchWindow(since=..., until=...)             # _lastUpdated ge/lt
    for page in client.search("ServiceRequest", window.params(count=100, include=...)):
        page.data, page.payload.entries                    # bytes as received, parsed entries

Behaviour:

* every request has a timeout (the client's, or ``timeout`` here);
* 429 and 5xx are retried after ``Retry-After`` (seconds or an HTTP date, capped), or an
  exponential backoff without one, as are timeouts and connection errors; waits, ``sleep`` and
  clock come from the shared :class:`~cmohub.sources.rest.RetryPolicy` (FHIR defaults:
  :meth:`~cmohub.sources.rest.RetryPolicy.for_fhir`); when retries run out the error is
  :class:`~cmohub.errors.SourceRateLimited` / :class:`~cmohub.errors.SourceUnavailable` /
  :class:`~cmohub.errors.SourceTimeout` (Transient: the task is retried later);
* other 4xx answers become :class:`~cmohub.errors.SourceError` whose message lists the
  OperationOutcome's issue codes and element paths (``SOURCE_FHIR_NOT_FOUND``,
  ``SOURCE_FHIR_AUTH`` for 401/403, ``SOURCE_FHIR_REJECTED`` otherwise); a 200 that carries
  only an error OperationOutcome is ``SOURCE_FHIR_OUTCOME``;
* a page that does not parse (cut off in transit) is fetched again; if it stays broken the
  error is ``SOURCE_FHIR_PAGE_MALFORMED`` (Transient);
* ``link[next]`` is followed only on the base URL's own origin (``SOURCE_FHIR_LINK_FOREIGN``
  otherwise: credentials are never sent elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from cmohub.errors import (
    ConfigError,
    ParseError,
    SourceError,
    SourceRateLimited,
    SourceTimeout,
    SourceUnavailable,
)
from cmohub.formats.fhir import (
    FhirPayload,
    FhirVersion,
    describe_outcome,
    outcome_issues,
    parse_json,
    parse_payload,
)
from cmohub.log import get_logger
from cmohub.sources.rest import RetryPolicy, retry_after_seconds

__all__ = [
    "FhirClient",
    "FhirPage",
    "LinkNextPaging",
    "RetryPolicy",
    "SearchWindow",
    "lookback",
    "retry_after_seconds",
]

log = get_logger("cmohub.sources.fhir")

FHIR_JSON = "application/fhir+json"
Params = list[tuple[str, str]]


@dataclass(frozen=True)
class SearchWindow:
    """A ``_lastUpdated`` window: ``ge since`` (if any) and ``lt until``."""

    since: datetime | None
    until: datetime

    def __post_init__(self) -> None:
        for value in (self.since, self.until):
            if value is not None and value.tzinfo is None:
                raise ConfigError("search window bounds must be timezone-aware")

    def params(
        self,
        *,
        count: int | None = None,
        include: Sequence[str] = (),
        extra: Sequence[tuple[str, str]] = (),
    ) -> Params:
        out: Params = []
        if self.since is not None:
            out.append(("_lastUpdated", f"ge{_instant(self.since)}"))
        out.append(("_lastUpdated", f"lt{_instant(self.until)}"))
        if count:
            out.append(("_count", str(count)))
        out.extend(("_include", value) for value in include)
        out.extend(extra)
        return out

    def contains(self, last_updated: str | None) -> bool:
        """Whether a resource's ``meta.lastUpdated`` falls inside the window."""
        if not last_updated:
            return True  # servers filter; a resource without meta cannot be placed
        try:
            instant = datetime.fromisoformat(last_updated.replace("Z", "+00:00"))
        except ValueError:
            return True
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        return (self.since is None or instant >= self.since) and instant < self.until


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class FhirPage:
    """One page as received (``data`` is kept, encrypted, as the raw payload) and parsed."""

    number: int
    url: str
    data: bytes
    payload: FhirPayload


class LinkNextPaging:
    """FHIR paging: the server's ``link[next]`` URL, on the base URL's origin only."""

    def __init__(self, base_url: str) -> None:
        self.origin = _origin(base_url)

    def next_url(self, page: FhirPayload) -> str | None:
        url = page.next_url
        if not url:
            return None
        if _origin(url) != self.origin:
            raise SourceError(
                "link[next] points outside the server's base URL; not followed",
                code="SOURCE_FHIR_LINK_FOREIGN",
            )
        return url


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), port)


class FhirClient:
    """A FHIR server's REST API through an injected ``httpx.Client``."""

    def __init__(
        self,
        client: httpx.Client,
        base_url: str,
        *,
        version: FhirVersion = FhirVersion.R4,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout | None = 30.0,
        paging: LinkNextPaging | None = None,
    ) -> None:
        self.http = client
        self.base_url = base_url.rstrip("/")
        self.version = version
        self.retry = retry or RetryPolicy.for_fhir()
        self.timeout = timeout
        self.paging = paging or LinkNextPaging(self.base_url)
        self.requests = 0
        self.retries: dict[str, int] = {}

    @property
    def sleep(self) -> Callable[[float], None]:
        """The retry policy's ``sleep`` (bulk export polls wait with it too)."""
        return self.retry.sleep

    def __repr__(self) -> str:
        return f"FhirClient({self.base_url!r}, {self.version.value})"

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def _count_retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        headers: dict[str, str] | None = None,
        accept: Sequence[int] = (200,),
    ) -> httpx.Response:
        """One request with retries; returns a response whose status is in ``accept``."""
        url = self.url(path)
        where = urlsplit(url).path
        policy = self.retry
        for attempt in range(1, policy.attempts + 1):
            last = attempt == policy.attempts
            self.requests += 1
            try:
                response = self.http.request(
                    method,
                    url,
                    params=None if params is None else httpx.QueryParams(tuple(params)),
                    headers={"Accept": FHIR_JSON, **(headers or {})},
                    timeout=self.timeout if self.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
                response.read()
            except httpx.TimeoutException:
                if last:
                    raise SourceTimeout(
                        f"no answer within the timeout after {attempt} tries", where=where
                    ) from None
                self._count_retry("timeout")
                policy.sleep(policy.wait_for(None, attempt))
                continue
            except httpx.TransportError as error:
                if last:
                    raise SourceUnavailable(
                        f"cannot reach the FHIR server ({type(error).__name__})", where=where
                    ) from None
                self._count_retry("transport")
                policy.sleep(policy.wait_for(None, attempt))
                continue
            status = response.status_code
            if status in accept:
                return response
            if status == 429 or status >= 500:
                if last:
                    message = f"HTTP {status} after {attempt} tries"
                    if status == 429:
                        # The server's own figure (uncapped; None without one), not our wait.
                        delay = retry_after_seconds(
                            response.headers.get("Retry-After"), policy.now()
                        )
                        raise SourceRateLimited(
                            message, retry_after_seconds=delay, where=where
                        ) from None
                    raise SourceUnavailable(message, where=where)
                self._count_retry(str(status))
                policy.sleep(policy.wait_for(response, attempt))
                continue
            raise self._error(response, where)
        raise SourceUnavailable("no attempt was made", where=where)  # pragma: no cover

    def _error(self, response: httpx.Response, where: str) -> SourceError:
        status = response.status_code
        detail = ""
        try:
            detail = describe_outcome(outcome_issues(parse_json(response.content)))
        except ParseError:
            detail = "no OperationOutcome"
        code = (
            "SOURCE_FHIR_AUTH"
            if status in (401, 403)
            else "SOURCE_FHIR_NOT_FOUND"
            if status in (404, 410)
            else "SOURCE_FHIR_REJECTED"
        )
        return SourceError(f"HTTP {status}: {detail}", code=code, where=where)

    def get_payload(self, path: str, *, params: Params | None = None) -> tuple[bytes, FhirPayload]:
        """GET a Bundle or resource; a page that does not parse is fetched again."""
        attempts = self.retry.malformed_page_attempts
        for attempt in range(1, attempts + 1):
            response = self.request("GET", path, params=params)
            data = response.content
            try:
                payload = parse_payload(data, ndjson=False)
            except ParseError as error:
                if attempt == attempts:
                    raise SourceUnavailable(
                        f"the server's page does not parse ({error.code}) after {attempt} tries",
                        code="SOURCE_FHIR_PAGE_MALFORMED",
                        where=urlsplit(self.url(path)).path,
                    ) from None
                self._count_retry("malformed")
                continue
            only = payload.entries[0].resource if len(payload.entries) == 1 else None
            if payload.kind == "resource" and only is not None:
                issues = outcome_issues(only)
                if any(i.severity in ("error", "fatal") for i in issues):
                    raise SourceError(
                        describe_outcome(issues),
                        code="SOURCE_FHIR_OUTCOME",
                        where=urlsplit(self.url(path)).path,
                    )
            return data, payload
        raise SourceUnavailable("no attempt was made")  # pragma: no cover

    def search(self, resource_type: str, params: Params) -> Iterator[FhirPage]:
        """Every page of a search, following ``link[next]``."""
        url: str | None = self.url(resource_type)
        query: Params | None = params
        number = 0
        while url is not None:
            number += 1
            data, payload = self.get_payload(url, params=query)
            if payload.kind != "bundle":
                raise SourceError(
                    "a search answered with something other than a Bundle",
                    code="SOURCE_FHIR_REJECTED",
                    where=resource_type,
                )
            yield FhirPage(number, url, data, payload)
            url = self.paging.next_url(payload)
            query = None  # the next link carries the whole query

    def read_patients(self, ids: Sequence[str], *, chunk: int = 50) -> Iterator[FhirPage]:
        """Patients by logical id (``Patient?_id=a,b,...``), for subjects no _include returned."""
        unique = sorted(set(ids))
        for start in range(0, len(unique), chunk):
            part = unique[start : start + chunk]
            yield from self.search("Patient", [("_id", ",".join(part)), ("_count", str(len(part)))])

    def capabilities(self) -> dict[str, Any]:
        """The server's CapabilityStatement (``metadata``) as a dict."""
        _, payload = self.get_payload("metadata")
        resource = payload.entries[0].resource if payload.entries else None
        return dict(resource or {})


def lookback(value: float | int | timedelta) -> timedelta:
    """A lookback window from seconds or a timedelta (never negative)."""
    delta = value if isinstance(value, timedelta) else timedelta(seconds=float(value))
    if delta < timedelta(0):
        raise ConfigError("lookback must not be negative")
    return delta
