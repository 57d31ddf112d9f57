"""Courier REST API: shipments with their legs, and the logger files of delivered legs (I/O).

A courier connector is configured by its feed mapping's ``source.options`` (reviewed like
code, no secrets) and gets its address and credentials from a connection
(:class:`~cmohub.sources.endpoint.SourceEndpoint` or an Airflow Connection turned into one)::

    options:
      base_url: https://api.courier.example/      # default; the connection overrides it
      path: v1/shipments
      record_path: shipments
      carriers: [POLAR, CRYOWAY]                  # one listing per carrier (carrier=<code>)
      auth: {style: oauth2, token_path: oauth/token, scope: shipments.read}
      paging: {style: cursor, cursor_param: cursor, next_field: next_cursor, page_size: 25}
      incremental: {since_param: delivered_since, until_param: delivered_until,
                    lookback_minutes: 360}

``auth.style`` is ``none``, ``api_key`` (the connection's password, in ``auth.header``),
``bearer`` or ``oauth2`` (client credentials: the connection's login and password);
``paging.style`` is ``cursor``, ``offset`` or ``link``. The caller asks for a window
[since, until); it starts ``lookback_minutes`` before the last run's end, so what a courier
delivered late is read again (the pipeline suppresses what it already staged).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cmohub.sources.epcis import epcis_time
from cmohub.sources.rest import (
    Page,
    Paging,
    RestClient,
    build_paging,
    iter_pages,
    options_error,
)


@dataclass(frozen=True)
class Incremental:
    since_param: str = "since"
    until_param: str | None = "until"
    lookback: timedelta = timedelta(hours=6)

    def params(self, since: datetime | None, until: datetime | None) -> dict[str, str]:
        out: dict[str, str] = {}
        if since is not None:
            out[self.since_param] = epcis_time(since)
        if until is not None and self.until_param:
            out[self.until_param] = epcis_time(until)
        return out


@dataclass(frozen=True)
class RestListing:
    """One paged listing of a REST API, as its mapping configures it."""

    path: str
    record_path: str
    paging: Paging
    incremental: Incremental
    carriers: tuple[str, ...] = ()
    carrier_param: str = "carrier"
    auth: Mapping[str, Any] = field(default_factory=dict)
    base_url: str | None = None

    def count(self, page: Page) -> int:
        document = page.json()
        for part in self.record_path.split("."):
            document = document.get(part) if isinstance(document, Mapping) else None
        return len(document) if isinstance(document, list) else 0


def rest_listing(options: Mapping[str, Any]) -> RestListing:
    """Read a mapping's ``source.options`` (see the module docstring)."""
    if "path" not in options:
        raise options_error("a REST source needs options.path")
    incremental = options.get("incremental") or {}
    carriers = options.get("carriers") or ()
    if isinstance(carriers, str) or not all(isinstance(c, str) for c in carriers):
        raise options_error("options.carriers must be a list of courier codes")
    return RestListing(
        path=str(options["path"]),
        record_path=str(options.get("record_path", "items")),
        paging=build_paging(options.get("paging") or {}),
        incremental=Incremental(
            since_param=str(incremental.get("since_param", "since")),
            until_param=incremental.get("until_param", "until"),
            lookback=timedelta(minutes=int(incremental.get("lookback_minutes", 360))),
        ),
        carriers=tuple(carriers),
        carrier_param=str(options.get("carrier_param", "carrier")),
        auth=dict(options.get("auth") or {}),
        base_url=options.get("base_url"),
    )


class CourierApi:
    """Paged listings of a courier API (shipments, logger files) for a time window."""

    def __init__(self, rest: RestClient, listing: RestListing) -> None:
        self.rest = rest
        self.listing = listing

    def iter_pages(
        self, since: datetime | None, until: datetime | None
    ) -> Iterator[tuple[str | None, Page]]:
        """(carrier, page) for every page of every carrier's listing."""
        listing = self.listing
        window = listing.incremental.params(since, until)
        carriers: Sequence[str | None] = listing.carriers or (None,)
        for carrier in carriers:
            params = dict(window)
            if carrier is not None:
                params[listing.carrier_param] = carrier
            for page in iter_pages(
                self.rest, listing.path, params, listing.paging, items=listing.count
            ):
                yield carrier, page

    def download(self, path: str) -> Page:
        return self.rest.get(path)
