"""REST connectors and the courier API: retries with Retry-After, OAuth2 client credentials
and API keys, cursor / offset / link paging; logger files read in columns give exactly the
rows the row-by-row mappings give."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from cmohub.errors import SourceError, SourceRateLimited, SourceUnavailable
from cmohub.formats.epcis import parse_epcis_document, resolve_events, sensor_readings
from cmohub.formats.loggers import parse_logger_csv
from cmohub.identity import Actor, CoiStatus
from cmohub.mapping import apply_mapping, compile_mapping, read_records
from cmohub.mapping.store import load_mapping
from cmohub.notify import Alert
from cmohub.sandbox.servers.base import FaultPlan
from cmohub.sandbox.servers.courier import CourierServer
from cmohub.sensitive import Sensitive
from cmohub.sources.auth import OAuth2ClientCredentials, build_auth
from cmohub.sources.courier import CourierApi, rest_listing
from cmohub.sources.endpoint import SourceEndpoint
from cmohub.sources.rest import (
    CursorPaging,
    LinkPaging,
    OffsetPaging,
    RestClient,
    RetryPolicy,
    iter_pages,
    next_link,
    retry_after_seconds,
)

BASE = "https://api.courier.test/"


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def client(handler: object) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


# --- retries -------------------------------------------------------------------------------------


def test_429_and_503_wait_for_retry_after_then_succeed() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503, headers={"Retry-After": "2"}),
            httpx.Response(200, json={"ok": True}),
        ]
    )
    sleep = Recorder()
    rest = RestClient(client(lambda request: next(answers)), BASE, retry=RetryPolicy(sleep=sleep))
    assert rest.get("v1/shipments").json() == {"ok": True}
    assert sleep.waits == [7.0, 2.0]


def test_a_source_that_keeps_refusing_raises_transient_errors_after_bounded_attempts() -> None:
    sleep = Recorder()
    limited = RestClient(
        client(lambda r: httpx.Response(429, headers={"Retry-After": "600"})),
        BASE,
        retry=RetryPolicy(attempts=3, sleep=sleep, max_wait_seconds=60),
    )
    with pytest.raises(SourceRateLimited) as raised:
        limited.get("v1/shipments")
    assert raised.value.retryable and raised.value.retry_after_seconds == 60
    assert sleep.waits == [60.0, 60.0]  # Retry-After capped; no wait after the last attempt
    down = RestClient(
        client(lambda r: httpx.Response(503)), BASE, retry=RetryPolicy(attempts=2, sleep=Recorder())
    )
    with pytest.raises(SourceUnavailable):
        down.get("v1/shipments")


def test_client_errors_fail_at_once_with_the_status_in_the_code() -> None:
    calls = []
    rest = RestClient(client(lambda r: calls.append(r) or httpx.Response(404)), BASE)
    with pytest.raises(SourceError) as raised:
        rest.get("v1/nothing")
    assert raised.value.code == "SOURCE_HTTP_404" and not raised.value.retryable and len(calls) == 1


def test_retry_after_may_be_an_http_date() -> None:
    now = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)
    later = format_datetime(datetime(2026, 2, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert retry_after_seconds(later, now) == 30.0
    assert retry_after_seconds("soon", now) is None


def test_a_body_cut_off_in_transit_is_fetched_again() -> None:
    answers = iter(
        [
            httpx.Response(200, content=b'{"shipments": [{"tracking'),
            httpx.Response(200, json={"shipments": []}),
        ]
    )
    rest = RestClient(client(lambda r: next(answers)), BASE, retry=RetryPolicy(sleep=Recorder()))
    assert rest.get("v1/shipments", expect_json=True).json() == {"shipments": []}


# --- authentication ------------------------------------------------------------------------------


def test_oauth2_tokens_are_cached_until_they_expire_and_refreshed_once_on_401() -> None:
    clock = [0.0]
    tokens = []
    revoked: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            assert request.headers["authorization"].startswith("Basic ")
            assert b"grant_type=client_credentials" in request.content
            tokens.append(f"t{len(tokens)}")
            return httpx.Response(200, json={"access_token": tokens[-1], "expires_in": 300})
        bearer = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(401 if bearer in revoked else 200, json={"token": bearer})

    auth = OAuth2ClientCredentials(
        BASE + "oauth/token", "client", Sensitive("secret"), clock=lambda: clock[0]
    )
    rest = RestClient(client(handler), BASE, auth=auth, retry=RetryPolicy(sleep=Recorder()))
    assert [rest.get("v1/x").json()["token"] for _ in range(3)] == ["t0", "t0", "t0"]
    clock[0] = 271.0  # within 30 s of expiry: a new token before the old one lapses
    assert rest.get("v1/x").json()["token"] == "t1"
    revoked.add("t1")  # the server forgot it: one new token, the request goes through
    assert rest.get("v1/x").json()["token"] == "t2"
    assert auth.fetched == 3


def test_refused_client_credentials_are_a_terminal_error() -> None:
    auth = OAuth2ClientCredentials(BASE + "oauth/token", "client", Sensitive("wrong"))
    rest = RestClient(
        client(lambda r: httpx.Response(401, json={"error": "invalid_client"})), BASE, auth=auth
    )
    with pytest.raises(SourceError) as raised:
        rest.get("v1/x")
    assert raised.value.code == "SOURCE_AUTH_REFUSED"
    assert "wrong" not in str(raised.value)


def test_auth_is_chosen_by_the_mapping_and_filled_from_the_connection() -> None:
    endpoint = SourceEndpoint(BASE, login="client", password=Sensitive("s3cret"))
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200, json={})

    api_key = build_auth({"style": "api_key", "header": "X-Courier-Key"}, endpoint, BASE)
    RestClient(client(handler), BASE, auth=api_key).get("v1/x")
    assert seen["x-courier-key"] == "s3cret"
    oauth = build_auth({"style": "oauth2", "token_path": "oauth/token"}, endpoint, BASE)
    assert isinstance(oauth, OAuth2ClientCredentials) and oauth.token_url == BASE + "oauth/token"
    assert "s3cret" not in repr(oauth) and "s3cret" not in repr(endpoint)


# --- paging --------------------------------------------------------------------------------------


def test_cursor_offset_and_link_paging_read_every_page_once() -> None:
    items = list(range(23))

    def cursor_handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("cursor", "0"))
        size = int(request.url.params["limit"])
        following = start + size if start + size < len(items) else None
        return httpx.Response(
            200, json={"items": items[start : start + size], "next_cursor": following}
        )

    def offset_handler(request: httpx.Request) -> httpx.Response:
        start, size = int(request.url.params["offset"]), int(request.url.params["limit"])
        return httpx.Response(200, json={"items": items[start : start + size]})

    def link_handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("nextPageToken", "0"))
        size = int(request.url.params["perPage"])
        headers = {}
        if start + size < len(items):
            headers["Link"] = (
                f'<{BASE}events?perPage={size}&nextPageToken={start + size}>; rel="next"'
            )
        return httpx.Response(200, json={"items": items[start : start + size]}, headers=headers)

    def count(page: object) -> int:
        return len(page.json()["items"])  # type: ignore[attr-defined]

    for handler, paging in (
        (cursor_handler, CursorPaging(page_size=5)),
        (offset_handler, OffsetPaging(page_size=5)),
        (link_handler, LinkPaging(page_size=5)),
    ):
        rest = RestClient(client(handler), BASE)
        pages = list(iter_pages(rest, "events", {}, paging, items=count))  # type: ignore[arg-type]
        assert [i for p in pages for i in p.json()["items"]] == items


def test_link_headers_are_read_as_rfc_8288_says() -> None:
    header = '<https://a.test/p?x=1>; rel="prev", <https://a.test/p?x=3>;rel="next"'
    assert next_link(header) == "https://a.test/p?x=3"
    assert next_link('<https://a.test/p>; rel="prev"') is None


# --- the courier API -----------------------------------------------------------------------------


def shipment_pages(api: CourierApi) -> list[dict[str, object]]:
    return [
        s
        for _, p in api.iter_pages(None, datetime(2027, 1, 1, tzinfo=UTC))
        for s in p.json()["shipments"]
    ]


def test_the_courier_api_lists_each_carriers_shipments_with_oauth2(sandbox_program: Path) -> None:
    server = CourierServer(
        sandbox_program, faults=FaultPlan(rate_limit_every=4, retry_after_seconds=0)
    )
    listing = rest_listing(dict(load_mapping("logistics-courier-shipments").source.options))
    with server.running(), httpx.Client() as http:
        endpoint = SourceEndpoint(
            server.base_url, server.client_id, Sensitive(server.client_secret)
        )
        auth = build_auth(listing.auth, endpoint, server.base_url)
        api = CourierApi(
            RestClient(http, server.base_url, auth=auth, retry=RetryPolicy(sleep=Recorder())),
            listing,
        )
        shipments = shipment_pages(api)
        truth = json.loads((sandbox_program / "truth.json").read_text())
        assert len(shipments) == truth["counts"]["datasets"]["logistics.shipment"]
        assert len({s["tracking_no"] for s in shipments}) == len(shipments)
        assert server.tokens_issued == 1 and server.stats.faults["429"] > 0
        server.revoke_tokens()
        assert len(shipment_pages(api)) == len(shipments) and server.tokens_issued == 2


def test_the_courier_api_window_and_api_key(sandbox_program: Path) -> None:
    server = CourierServer(sandbox_program, auth="api_key")
    options = {
        **dict(load_mapping("logistics-courier-shipments").source.options),
        "auth": {"style": "api_key"},
    }
    listing = rest_listing(options)
    with server.running(), httpx.Client() as http:
        endpoint = SourceEndpoint(server.base_url, password=Sensitive(server.api_key))
        rest = RestClient(
            http, server.base_url, auth=build_auth(listing.auth, endpoint, server.base_url)
        )
        api = CourierApi(rest, listing)
        since, until = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 8, tzinfo=UTC)
        window = [s for _, p in api.iter_pages(since, until) for s in p.json()["shipments"]]
        changed = {
            s.body["tracking_no"]
            for s in server.shipments
            if any(since <= moment < until for moment in s.changes())
        }
        assert {s["tracking_no"] for s in window} == changed and changed
        in_transit = [s for s in window if s["status"] != "DELIVERED"]
        assert in_transit and all("delivered" not in s["legs"][-1] for s in in_transit if s["legs"])
        with pytest.raises(SourceError) as raised:
            RestClient(http, server.base_url).get("v1/shipments")
        assert raised.value.code == "SOURCE_HTTP_401"


# --- the vectorized paths give the mappings' rows ------------------------------------------------


def engine_rows(mapping: str, data: bytes) -> list[tuple[object, ...]]:
    spec = load_mapping(mapping)
    result = apply_mapping(
        compile_mapping(spec), read_records(spec.source, data), run_id="r", source_sha256="0" * 64
    )
    assert not result.rejected
    return [
        (
            r.values["logger_id"],
            r.values["shipment_id"],
            r.values["observed_at"],
            r.values["celsius"],
            r.locator,
        )
        for r in result.rows
    ]


def test_logger_files_read_in_columns_give_the_mappings_rows(sandbox_program: Path) -> None:
    files = sorted((sandbox_program / "courier").glob("*/loggers/*/*.csv"))
    assert files
    for path in files[:6]:
        data = path.read_bytes()
        parsed = parse_logger_csv(data)
        columns = pa.table(
            {
                "logger_id": parsed.logger_id,
                "shipment_id": parsed.shipment_id,
                "observed_at": parsed.observed_at,
                "celsius": parsed.celsius,
            }
        ).to_pylist()
        vectorized = [(*r.values(), loc) for r, loc in zip(columns, parsed.locators(), strict=True)]
        expected = engine_rows("logistics-logger-csv", data)
        assert [v[:3] + v[4:] for v in vectorized] == [e[:3] + e[4:] for e in expected]
        assert [v[3] for v in vectorized] == pytest.approx([e[3] for e in expected], abs=1e-9)


def test_epcis_sensor_reports_read_in_columns_give_the_mappings_rows(sandbox_program: Path) -> None:
    for path in sorted((sandbox_program / "epcis").glob("*.jsonld"))[:4]:
        data = path.read_bytes()
        kept = resolve_events(parse_epcis_document(data).events).kept
        readings = sensor_readings([e for e in kept if e.is_sensor_event])
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        vectorized = sorted(
            (logger, shipment, epoch + timedelta(microseconds=at), celsius)
            for logger, shipment, at, celsius in zip(
                readings.logger_id,
                readings.shipment_id,
                readings.observed_at,
                readings.celsius,
                strict=True,
            )
        )
        expected = sorted(r[:4] for r in engine_rows("logistics-epcis-sensor", data))
        assert vectorized == expected


class Enrolled:
    def __init__(self, program: Path) -> None:
        lines = (program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
        self.cois = {json.loads(line)["coi"] for line in lines if line.strip()}

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        return [CoiStatus.KNOWN if c in self.cois else CoiStatus.UNKNOWN for c in cois]

    def tokenize_many(self, requests: Sequence[object], *, actor: Actor) -> list[object]:
        raise AssertionError("logistics feeds never tokenize")


class Recording:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


def test_an_excursion_seen_in_transit_alerts_open_and_then_closed(
    sandbox_program: Path, tmp_path: Path
) -> None:
    from cmohub.pipelines.context import RunContext
    from cmohub.pipelines.logistics import sync_courier, sync_epcis, watch_excursions
    from cmohub.sandbox.servers.epcis import EpcisServer
    from cmohub.settings import load_settings

    truth = json.loads((sandbox_program / "truth.json").read_text())
    fault = next(f for f in truth["faults"] if f["rule"] == "TEMPERATURE_EXCURSION")
    shipment = fault["key"]["shipment_id"]
    settings = load_settings(home=tmp_path)
    port, notifier = Enrolled(sandbox_program), Recording()
    epcis, courier = EpcisServer(sandbox_program), CourierServer(sandbox_program)
    # The planted excursion runs from 01:58 to 02:44 UTC on 21 January, on a leg that arrives
    # at 03:13: at 02:10 the readings up to 01:59 are in and the leg is in transit.
    seen = {}
    with epcis.running(), courier.running():
        for when in ("2026-01-21T02:10:00+00:00", "2026-01-21T04:00:00+00:00"):
            end = datetime.fromisoformat(when)
            context = RunContext.for_interval(
                "logistics_sync", end, end, run_id=f"run-{end:%H%M}", settings=settings
            )
            sync_epcis(context, endpoint=SourceEndpoint(epcis.base_url), port=port)
            sync_courier(
                context,
                endpoint=SourceEndpoint(
                    courier.base_url, courier.client_id, Sensitive(courier.client_secret)
                ),
                port=port,
            )
            seen[when] = watch_excursions(context, notifier=notifier)
    first, second = seen.values()
    assert (first["open"], first["alerts_sent"], second["open"], second["alerts_sent"]) == (
        1,
        1,
        0,
        1,
    )
    assert [(a.state, a.key.split(":")[1]) for a in notifier.alerts] == [
        ("open", shipment),
        ("closed", shipment),
    ]
