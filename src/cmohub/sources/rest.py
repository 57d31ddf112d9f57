"""A REST connector's moving parts: retries, authentication and paging strategies (I/O).

Connectors (the EPCIS query client, the courier API) are built from these pieces and receive
their ``httpx.Client`` from the caller (STYLE.md: connectors receive their transport), so tests
hand them a mock transport or a loopback server:

* :class:`RestClient` — GET with timeouts and bounded retries: 429 and 503 wait for
  ``Retry-After`` (seconds or an HTTP date, capped), 502/504 and dropped connections back off;
  when the attempts are used up it raises :class:`~cmohub.errors.SourceRateLimited`,
  :class:`~cmohub.errors.SourceUnavailable` or :class:`~cmohub.errors.SourceTimeout`
  (Transient: Airflow retries the task). Other 4xx answers raise
  :class:`~cmohub.errors.SourceError` (Terminal) with ``SOURCE_HTTP_<status>``.
* Authentication is an ``httpx.Auth`` flow from :mod:`cmohub.sources.auth` (API key, bearer,
  OAuth2 client credentials); a token endpoint's 429 and 5xx are retried like the API's.
* Paging: :class:`CursorPaging` (an opaque cursor from the body), :class:`OffsetPaging`
  (offset/limit until a short page), :class:`LinkPaging` (``Link: <…>; rel="next"`` — the
  EPCIS 2.0 REST binding's ``nextPageToken`` links, also sent as ``GS1-Next-Page-Token``).

Secrets are :class:`~cmohub.sensitive.Sensitive` and never logged; log lines name the path
and status, never query values.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx

from cmohub.errors import (
    ConfigError,
    SourceError,
    SourceRateLimited,
    SourceTimeout,
    SourceUnavailable,
)
from cmohub.log import get_logger

log = get_logger(__name__)

Params = dict[str, str]


# --- configuration -----------------------------------------------------------------------------


def options_error(message: str) -> ConfigError:
    """A mistake in a REST feed mapping's ``source.options``."""
    return ConfigError(message, code="SOURCE_CONFIG", where="mapping source.options")


def build_paging(options: Mapping[str, Any]) -> Paging:
    style = str(options.get("style", "cursor"))
    size = int(options.get("page_size", 100))
    if size < 1:
        raise options_error("paging.page_size must be positive")
    if style == "cursor":
        return CursorPaging(
            cursor_param=str(options.get("cursor_param", "cursor")),
            next_field=str(options.get("next_field", "next_cursor")),
            limit_param=str(options.get("limit_param", "limit")),
            page_size=size,
        )
    if style == "offset":
        return OffsetPaging(
            offset_param=str(options.get("offset_param", "offset")),
            limit_param=str(options.get("limit_param", "limit")),
            page_size=size,
        )
    if style == "link":
        return LinkPaging(page_size_param=options.get("size_param", "perPage"), page_size=size)
    raise options_error(f"unknown paging style {style!r} (cursor, offset, link)")


# --- retries -------------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(tz=UTC)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for every HTTP connector (REST, EPCIS, courier, FHIR).

    ``sleep`` and ``now`` are injectable so tests do not wait and HTTP-date ``Retry-After``
    values are computed against a known clock. The defaults are the REST connectors';
    :meth:`for_fhir` gives the FHIR client's.
    """

    attempts: int = 4  # tries in all, per request
    backoff_seconds: float = 0.5  # first wait without Retry-After; doubles each attempt
    max_wait_seconds: float = 60.0  # cap on any wait, Retry-After included
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], datetime] = _utc_now
    # FHIR only: fetches of a page that does not parse (FhirClient.get_payload), each a full
    # request with its own ``attempts``; no wait between them.
    malformed_page_attempts: int = 3

    @classmethod
    def for_fhir(
        cls,
        *,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = _utc_now,
    ) -> RetryPolicy:
        """The FHIR client's defaults: 5 tries, 1 s doubling backoff, waits capped at 120 s."""
        return cls(
            attempts=5,
            backoff_seconds=1.0,
            max_wait_seconds=120.0,
            sleep=sleep,
            now=now,
            malformed_page_attempts=3,
        )

    def wait_for(self, response: httpx.Response | None, attempt: int) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): Retry-After when the response
        has a usable one, else the backoff for that attempt; capped at ``max_wait_seconds``."""
        header = response.headers.get("Retry-After") if response is not None else None
        parsed = retry_after_seconds(header, self.now()) if header else None
        wait = parsed if parsed is not None else self.backoff_seconds * (2 ** (attempt - 1))
        return float(min(max(wait, 0.0), self.max_wait_seconds))


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None when
    absent or unreadable. ``now`` (default: the clock) is what an HTTP date is measured from."""
    text = (value or "").strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or _utc_now())).total_seconds())


_RETRY_STATUS = frozenset({429, 502, 503, 504})


def where_of(url: str) -> str:
    """Where a request went, without its query (query values may name records)."""
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}" if parts.netloc else parts.path


@dataclass
class Page:
    """One page as received: its URL (without query), raw bytes and their SHA-256."""

    url: str
    status: int
    headers: Mapping[str, str]
    content: bytes
    sha256: str

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SourceError(
                "the source answered with a body that is not JSON",
                code="SOURCE_BODY_INVALID",
                where=self.url,
            ) from None


class RestClient:
    """GETs with authentication and bounded retries over an injected ``httpx.Client``."""

    def __init__(
        self,
        client: httpx.Client,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url:
            raise ConfigError("the source has no base URL", code="SOURCE_CONFIG")
        self.client = client
        self.base_url = base_url.rstrip("/") + "/"
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.requests = 0

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path.lstrip("/")) if "://" not in path else path

    def get(
        self, path: str, params: Mapping[str, str] | None = None, *, expect_json: bool = False
    ) -> Page:
        """GET ``path``; with ``expect_json`` a body that is not JSON (cut off in transit)
        is fetched again like a 503."""
        url = self.url(path)
        attempt = 0
        while True:
            attempt += 1
            self.requests += 1
            try:
                response = self.client.get(
                    url,
                    params=dict(params or {}),
                    headers=self.headers,
                    auth=self.auth or httpx.USE_CLIENT_DEFAULT,
                    timeout=self.timeout,
                )
            except (SourceRateLimited, SourceUnavailable, SourceTimeout) as error:
                # Raised by the auth flow's token endpoint, as fallible as the API: same
                # bounded retries.
                if attempt >= self.retry.attempts:
                    raise
                wait = getattr(error, "retry_after_seconds", None)
                self.retry.sleep(
                    min(wait, self.retry.max_wait_seconds)
                    if wait is not None
                    else self.retry.wait_for(None, attempt)
                )
                continue
            except httpx.TimeoutException as error:
                if attempt >= self.retry.attempts:
                    raise SourceTimeout(
                        f"no answer within {self.timeout:.0f}s after {attempt} attempts",
                        where=where_of(url),
                    ) from error
                self.retry.sleep(self.retry.wait_for(None, attempt))
                continue
            except httpx.TransportError as error:
                if attempt >= self.retry.attempts:
                    raise SourceUnavailable(
                        f"unreachable after {attempt} attempts ({type(error).__name__})",
                        where=where_of(url),
                    ) from error
                self.retry.sleep(self.retry.wait_for(None, attempt))
                continue
            status = response.status_code
            if status in _RETRY_STATUS:
                wait = self.retry.wait_for(response, attempt)
                if attempt >= self.retry.attempts:
                    log.warning("source %s answered HTTP %s; giving up", where_of(url), status)
                    if status == 429:
                        raise SourceRateLimited(
                            f"rate limited after {attempt} attempts",
                            retry_after_seconds=wait,
                            where=where_of(url),
                        )
                    raise SourceUnavailable(
                        f"HTTP {status} after {attempt} attempts", where=where_of(url)
                    )
                log.info(
                    "source %s answered HTTP %s; retrying in %.1fs", where_of(url), status, wait
                )
                self.retry.sleep(wait)
                continue
            if status >= 500:
                raise SourceUnavailable(f"HTTP {status}", where=where_of(url))
            if status >= 400:
                raise SourceError(
                    f"the source refused the request (HTTP {status})",
                    code=f"SOURCE_HTTP_{status}",
                    where=where_of(url),
                )
            content = response.content
            if expect_json and not _is_json(content):
                if attempt >= self.retry.attempts:
                    raise SourceUnavailable(
                        f"the body was not JSON {attempt} times (cut off in transit?)",
                        where=where_of(url),
                    )
                log.info("source %s answered a body that is not JSON; retrying", where_of(url))
                self.retry.sleep(self.retry.wait_for(None, attempt))
                continue
            return Page(
                url=where_of(str(response.url)),
                status=status,
                headers=dict(response.headers),
                content=content,
                sha256=hashlib.sha256(content).hexdigest(),
            )


def _is_json(content: bytes) -> bool:
    try:
        json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


# --- paging --------------------------------------------------------------------------------------


class Paging(Protocol):
    """How to ask for the first page and find the next one."""

    def first(self, params: Params) -> Params: ...

    def next(self, page: Page, params: Params, items: int) -> tuple[str | None, Params] | None:
        """The next request (a URL to follow, or None for the same path; and its params),
        or None when ``page`` was the last."""
        ...


def _dig(document: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(document, Mapping):
            return None
        document = document.get(part)
    return document


@dataclass(frozen=True)
class CursorPaging:
    """An opaque cursor: the body names the next one (``next_cursor``), sent back as a param."""

    cursor_param: str = "cursor"
    next_field: str = "next_cursor"
    limit_param: str = "limit"
    page_size: int = 100

    def first(self, params: Params) -> Params:
        return {**params, self.limit_param: str(self.page_size)}

    def next(self, page: Page, params: Params, items: int) -> tuple[str | None, Params] | None:
        cursor = _dig(page.json(), self.next_field)
        if not cursor:
            return None
        return None, {**params, self.cursor_param: str(cursor)}


@dataclass(frozen=True)
class OffsetPaging:
    """``offset`` / ``limit`` until a page comes back shorter than the limit."""

    offset_param: str = "offset"
    limit_param: str = "limit"
    page_size: int = 100

    def first(self, params: Params) -> Params:
        return {**params, self.offset_param: "0", self.limit_param: str(self.page_size)}

    def next(self, page: Page, params: Params, items: int) -> tuple[str | None, Params] | None:
        if items < self.page_size:
            return None
        offset = int(params.get(self.offset_param, "0")) + items
        return None, {**params, self.offset_param: str(offset)}


@dataclass(frozen=True)
class LinkPaging:
    """Follow ``Link: <url>; rel="next"`` (EPCIS: a URL carrying ``nextPageToken``).

    Servers that send only a ``GS1-Next-Page-Token`` header get the token sent back as the
    ``token_param`` query parameter.
    """

    page_size_param: str | None = "perPage"
    page_size: int = 100
    token_param: str = "nextPageToken"  # noqa: S105 - a query parameter name, not a secret
    token_header: str = "GS1-Next-Page-Token"  # noqa: S105 - a header name, not a secret

    def first(self, params: Params) -> Params:
        if self.page_size_param:
            return {**params, self.page_size_param: str(self.page_size)}
        return dict(params)

    def next(self, page: Page, params: Params, items: int) -> tuple[str | None, Params] | None:
        headers = {k.lower(): v for k, v in page.headers.items()}
        link = next_link(headers.get("link", ""))
        if link is not None:
            parts = urlsplit(link)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else (
                parts.path or None
            ), query
        token = headers.get(self.token_header.lower())
        if token:
            return None, {**params, self.token_param: token}
        return None


def next_link(header: str) -> str | None:
    """The target of the ``rel="next"`` link in an RFC 8288 ``Link`` header."""
    for part in header.split(","):
        if "<" not in part or ">" not in part:
            continue
        target = part[part.index("<") + 1 : part.index(">")]
        attributes = part[part.index(">") + 1 :].lower().replace(" ", "")
        if 'rel="next"' in attributes or "rel=next" in attributes:
            return target
    return None


def iter_pages(
    rest: RestClient,
    path: str,
    params: Mapping[str, str],
    paging: Paging,
    *,
    items: Callable[[Page], int],
    max_pages: int = 10_000,
) -> Iterator[Page]:
    """Every page of a listing, in order; ``items`` counts the records on a page."""
    current_path: str = path
    current = paging.first(dict(params))
    for _ in range(max_pages):
        page = rest.get(current_path, current, expect_json=True)
        yield page
        following = paging.next(page, current, items(page))
        if following is None:
            return
        url, current = following
        if url is not None:
            current_path = url
    raise SourceError(
        f"more than {max_pages} pages: the source keeps answering with a next page",
        code="SOURCE_PAGING_RUNAWAY",
        where=where_of(rest.url(path)),
    )
