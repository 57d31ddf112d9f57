"""EPCIS 2.0 query client: ``GET /events`` with time filters, paged (I/O).

The EPCIS 2.0 REST binding answers ``GET /events`` with an ``EPCISQueryDocument`` and pages
with ``perPage`` and a ``nextPageToken`` carried in the ``Link: <…>; rel="next"`` header.
:class:`EpcisQueryClient` asks for a window of event times (``GE_eventTime`` /
``LT_eventTime``; record times with ``by="recordTime"``), optionally restricted to EPCs
(``MATCH_anyEPC``, e.g. ``urn:cmohub:coi:*``) and event types, and yields every page as
received (:class:`~cmohub.sources.rest.Page`: bytes and SHA-256) for the raw store; parsing is
:mod:`cmohub.formats.epcis`'s job.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cmohub.errors import ConfigError, SourceError
from cmohub.sources.rest import LinkPaging, Page, RestClient, iter_pages

EPCIS_HEADERS = {"Accept": "application/ld+json, application/json", "GS1-EPCIS-Version": "2.0"}


def epcis_time(moment: datetime) -> str:
    """An instant as EPCIS query parameters want it: UTC, milliseconds, ``Z``."""
    if moment.tzinfo is None:
        raise ConfigError("query times must carry a UTC offset", code="SOURCE_CONFIG")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class EpcisQuery:
    """A window of events: [since, until) on event or record time."""

    since: datetime | None = None
    until: datetime | None = None
    by: str = "eventTime"  # or "recordTime"
    match_any_epc: str | None = None
    event_types: Sequence[str] = ()

    def params(self) -> dict[str, str]:
        if self.by not in ("eventTime", "recordTime"):
            raise ConfigError(
                "EPCIS queries filter by eventTime or recordTime", code="SOURCE_CONFIG"
            )
        out: dict[str, str] = {}
        if self.since is not None:
            out[f"GE_{self.by}"] = epcis_time(self.since)
        if self.until is not None:
            out[f"LT_{self.by}"] = epcis_time(self.until)
        if self.match_any_epc:
            out["MATCH_anyEPC"] = self.match_any_epc
        if self.event_types:
            out["eventType"] = ",".join(self.event_types)
        return out


def _event_count(page: Page) -> int:
    document = page.json()
    body = document.get("epcisBody") if isinstance(document, dict) else None
    if not isinstance(body, dict):
        raise SourceError(
            "the EPCIS repository answered without an epcisBody",
            code="SOURCE_BODY_INVALID",
            where=page.url,
        )
    results = body.get("queryResults")
    events = (
        (results.get("resultsBody") or {}).get("eventList")
        if isinstance(results, dict)
        else body.get("eventList")
    )
    return len(events) if isinstance(events, list) else 0


class EpcisQueryClient:
    """Pages of ``GET /events`` from an EPCIS 2.0 repository."""

    def __init__(
        self, rest: RestClient, *, events_path: str = "events", page_size: int = 200
    ) -> None:
        self.rest = rest
        self.events_path = events_path
        self.paging = LinkPaging(page_size_param="perPage", page_size=page_size)
        for name, value in EPCIS_HEADERS.items():
            rest.headers.setdefault(name, value)

    def iter_pages(self, query: EpcisQuery) -> Iterator[Page]:
        """Every page of the query's events, as received."""
        yield from iter_pages(
            self.rest, self.events_path, query.params(), self.paging, items=_event_count
        )
