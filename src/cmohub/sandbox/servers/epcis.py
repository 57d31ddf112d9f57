"""A sandbox EPCIS 2.0 repository on loopback: ``GET /events`` over a generated program.

Serves the events of ``<program>/epcis/*.jsonld`` the way the EPCIS 2.0 REST binding does:

* ``GET /events`` answers an ``EPCISQueryDocument`` (``queryResults.resultsBody.eventList``),
  events in event-time order;
* filters ``GE_eventTime`` / ``LT_eventTime`` (and ``GE_recordTime`` / ``LT_recordTime``:
  the sandbox records every event one minute after it happened), ``eventType``,
  ``MATCH_anyEPC`` (a trailing ``*`` matches a prefix) and ``EQ_bizStep``;
* paging: ``perPage`` (default 100, at most 1000) and an opaque ``nextPageToken`` given in
  ``Link: <…>; rel="next"`` (and ``GS1-Next-Page-Token``); a token is bound to its query,
  reused with other filters it is refused (400);
* optional API key (``X-Api-Key``) or bearer token;
* faults from :class:`~cmohub.sandbox.servers.base.FaultPlan` (429 with ``Retry-After``,
  503, slow answers, a truncated body once per path).

Each event keeps the ``@context`` of the document it came from (the query document carries
the union of their namespace definitions).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from bisect import bisect_left
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cmohub.sandbox.servers.base import FaultPlan, LoopbackServer, Request, Response

MAX_PER_PAGE = 1000
DEFAULT_PER_PAGE = 100
RECORD_DELAY = timedelta(minutes=1)
STANDARD_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"


@dataclass(frozen=True)
class _Event:
    at: datetime  # eventTime, UTC
    body: dict[str, Any]

    def epcs(self) -> list[str]:
        out: list[str] = []
        for name in ("epcList", "childEPCs", "inputEPCList", "outputEPCList"):
            out.extend(str(e) for e in self.body.get(name) or ())
        if self.body.get("parentID"):
            out.append(str(self.body["parentID"]))
        return out


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("no offset")
    return moment.astimezone(UTC)


def load_events(program: Path) -> tuple[list[_Event], dict[str, str]]:
    """Every event of the program's EPCIS documents, in event-time order, and namespaces."""
    events: list[tuple[datetime, int, dict[str, Any]]] = []
    namespaces: dict[str, str] = {}
    sequence = 0
    for path in sorted((program / "epcis").glob("*.jsonld")):
        document = json.loads(path.read_bytes())
        for item in document.get("@context") or ():
            if isinstance(item, dict):
                namespaces.update(item)
        for event in document["epcisBody"]["eventList"]:
            sequence += 1
            events.append((_utc(event["eventTime"]), sequence, event))
    events.sort(key=lambda e: (e[0], e[1]))
    return [_Event(at, body) for at, _, body in events], namespaces


class EpcisServer(LoopbackServer):
    """The sandbox program's EPCIS repository (see the module docstring)."""

    def __init__(
        self,
        program: Path,
        *,
        faults: FaultPlan | None = None,
        api_key: str | None = None,
        bearer_token: str | None = None,
    ) -> None:
        super().__init__(faults)
        self.events, self.namespaces = load_events(program)
        self._times = [e.at for e in self.events]
        self._api_key = api_key
        self._bearer = bearer_token
        self.route("GET", r"/events")(self._query)
        self.route("GET", r"/")(self._root)

    # --- helpers -------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if self._api_key is not None and request.headers.get("x-api-key") != self._api_key:
            return False
        return self._bearer is None or (
            request.headers.get("authorization") == f"Bearer {self._bearer}"
        )

    @staticmethod
    def _problem(status: int, title: str) -> Response:
        return Response.json(
            {"type": "epcisException:QueryParameterException", "title": title, "status": status},
            status=status,
        )

    def _root(self, request: Request, match: re.Match[str]) -> Response:
        return Response(200, b'["events"]', {"Content-Type": "application/json"})

    def _select(self, request: Request) -> list[_Event]:
        def time(name: str) -> datetime | None:
            value = request.arg(name)
            return _utc(value) if value else None

        ge, lt = time("GE_eventTime"), time("LT_eventTime")
        start = bisect_left(self._times, ge) if ge else 0
        stop = bisect_left(self._times, lt) if lt else len(self.events)
        chosen = self.events[start:stop]
        ge_record, lt_record = time("GE_recordTime"), time("LT_recordTime")
        if ge_record or lt_record:
            chosen = [
                e
                for e in chosen
                if (ge_record is None or e.at + RECORD_DELAY >= ge_record)
                and (lt_record is None or e.at + RECORD_DELAY < lt_record)
            ]
        types = {t for t in (request.arg("eventType") or "").split(",") if t}
        if types:
            chosen = [e for e in chosen if e.body.get("type") in types]
        steps = {s for s in (request.arg("EQ_bizStep") or "").split(",") if s}
        if steps:
            chosen = [e for e in chosen if e.body.get("bizStep") in steps]
        pattern = request.arg("MATCH_anyEPC")
        if pattern:
            patterns = pattern.split(",")

            def matches(epc: str) -> bool:
                return any(
                    epc.startswith(p[:-1]) if p.endswith("*") else epc == p for p in patterns
                )

            chosen = [e for e in chosen if any(matches(epc) for epc in e.epcs())]
        return chosen

    @staticmethod
    def _fingerprint(request: Request) -> str:
        filters = sorted(
            (k, v) for k, values in request.query.items() for v in values if k != "nextPageToken"
        )
        return hashlib.sha256(json.dumps(filters).encode()).hexdigest()[:16]

    # --- GET /events ------------------------------------------------------------------------

    def _query(self, request: Request, match: re.Match[str]) -> Response:
        if not self._authorized(request):
            return self._problem(401, "missing or wrong credentials")
        try:
            per_page = int(request.arg("perPage") or DEFAULT_PER_PAGE)
            chosen = self._select(request)
        except ValueError:
            return self._problem(400, "a query parameter is not valid")
        if not 1 <= per_page <= MAX_PER_PAGE:
            return self._problem(400, f"perPage must be 1..{MAX_PER_PAGE}")
        fingerprint = self._fingerprint(request)
        offset = 0
        token = request.arg("nextPageToken")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                offset, bound = int(state["o"]), str(state["q"])
            except (ValueError, KeyError, TypeError):
                return self._problem(400, "nextPageToken is not valid")
            if bound != fingerprint:
                return self._problem(400, "nextPageToken belongs to another query")
        page = chosen[offset : offset + per_page]
        body = {
            "@context": [STANDARD_CONTEXT, dict(sorted(self.namespaces.items()))],
            "type": "EPCISQueryDocument",
            "schemaVersion": "2.0",
            "creationDate": "2026-01-01T00:00:00Z",
            "epcisBody": {
                "queryResults": {
                    "queryName": "SimpleEventQuery",
                    "resultsBody": {
                        "eventList": [
                            {**e.body, "recordTime": _iso(e.at + RECORD_DELAY)} for e in page
                        ]
                    },
                }
            },
        }
        headers = {"Content-Type": "application/ld+json", "GS1-EPCIS-Version": "2.0.0"}
        if offset + per_page < len(chosen):
            next_token = base64.urlsafe_b64encode(
                json.dumps({"o": offset + per_page, "q": fingerprint}).encode()
            ).decode()
            params = [
                (k, v)
                for k, values in request.query.items()
                for v in values
                if k != "nextPageToken"
            ]
            params.append(("nextPageToken", next_token))
            headers["Link"] = f'<{self.base_url}/events?{urlencode(params)}>; rel="next"'
            headers["GS1-Next-Page-Token"] = next_token
        return Response(200, json.dumps(body, separators=(",", ":")).encode(), headers)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
