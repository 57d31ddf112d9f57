"""FHIR REST source: paging through link[next], Retry-After on 429/503, typed errors from
OperationOutcomes, timeouts, malformed pages, origin checks — with a mock transport."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from cmohub.errors import (
    SourceError,
    SourceRateLimited,
    SourceTimeout,
    SourceUnavailable,
)
from cmohub.sources.fhir import FhirClient, RetryPolicy, SearchWindow, retry_after_seconds

BASE = "https://fhir.example.invalid/r4"


def page(n: int, *, next_url: str | None = None) -> dict[str, object]:
    links = [{"relation": "self", "url": f"{BASE}/Procedure?_page={n}"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": {"resourceType": "Procedure", "id": f"p{n}"}}],
    }


def client_for(
    handler: Callable[[httpx.Request], httpx.Response], *, attempts: int = 4
) -> tuple[FhirClient, list[float]]:
    waits: list[float] = []
    client = FhirClient(
        httpx.Client(transport=httpx.MockTransport(handler)),
        BASE,
        retry=RetryPolicy(
            attempts=attempts, backoff_seconds=0.5, max_wait_seconds=30, sleep=waits.append
        ),
    )
    return client, waits


def test_search_follows_next_links_with_the_window_and_page_size() -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        number = int(request.url.params.get("_page", "1"))
        nxt = f"{BASE}/Procedure?_page={number + 1}" if number < 3 else None
        return httpx.Response(200, json=page(number, next_url=nxt))

    client, _ = client_for(handler)
    window = SearchWindow(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    pages = list(client.search("Procedure", window.params(count=50, include=["Procedure:subject"])))
    assert [p.number for p in pages] == [1, 2, 3]
    first = seen[0].params
    assert first.get_list("_lastUpdated") == ["ge2026-01-01T00:00:00Z", "lt2026-01-02T00:00:00Z"]
    assert first.get("_count") == "50" and first.get("_include") == "Procedure:subject"
    assert all(p.data for p in pages)


def test_429_and_503_wait_as_long_as_retry_after_says() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503, headers={"Retry-After": "3"}),
            httpx.Response(200, json=page(1)),
        ]
    )
    client, waits = client_for(lambda request: next(answers))
    list(client.search("Procedure", []))
    assert waits == [7.0, 3.0]
    assert client.retries == {"429": 1, "503": 1}


def test_retry_after_as_an_http_date_and_a_cap() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:10 GMT", now=now) == 10.0
    assert retry_after_seconds("soon") is None
    answers = iter(
        [httpx.Response(429, headers={"Retry-After": "99999"}), httpx.Response(200, json=page(1))]
    )
    client, waits = client_for(lambda request: next(answers))
    list(client.search("Procedure", []))
    assert waits == [30.0]


def test_retry_after_dates_and_waits_come_from_the_policy_clock_and_sleep() -> None:
    """The shared policy's ``now`` dates Retry-After, its ``sleep`` waits (nothing real)."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "Thu, 01 Jan 2026 12:00:45 GMT"}),
            httpx.Response(500),
            httpx.Response(200, json=page(1)),
        ]
    )
    waits: list[float] = []
    client = FhirClient(
        httpx.Client(transport=httpx.MockTransport(lambda request: next(answers))),
        BASE,
        retry=RetryPolicy.for_fhir(sleep=waits.append, now=lambda: now),
    )
    assert client.sleep == waits.append  # bulk export polls wait with the same sleep
    list(client.search("Procedure", []))
    assert waits == [45.0, 2.0]  # the date against the injected clock; backoff 1 s doubled
    assert client.retries == {"503": 1, "500": 1}


def test_the_fhir_defaults_are_five_tries_doubling_from_one_second() -> None:
    waits: list[float] = []
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    client = FhirClient(
        httpx.Client(transport=httpx.MockTransport(handler)),
        BASE,
        retry=RetryPolicy.for_fhir(sleep=waits.append),
    )
    with pytest.raises(SourceUnavailable, match="HTTP 503 after 5 tries"):
        client.get_payload("metadata")
    assert len(calls) == 5 and waits == [1.0, 2.0, 4.0, 8.0]
    default = FhirClient(httpx.Client(transport=httpx.MockTransport(handler)), BASE).retry
    assert (default.attempts, default.backoff_seconds, default.max_wait_seconds) == (5, 1.0, 120.0)
    assert default.malformed_page_attempts == 3


def test_rate_limits_that_do_not_stop_become_a_transient_error() -> None:
    client, waits = client_for(
        lambda request: httpx.Response(429, headers={"Retry-After": "1"}), attempts=3
    )
    with pytest.raises(SourceRateLimited) as raised:
        list(client.search("Procedure", []))
    assert raised.value.retryable and raised.value.retry_after_seconds == 1.0
    assert len(waits) == 2


def test_timeouts_retry_then_fail_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client, waits = client_for(handler, attempts=3)
    with pytest.raises(SourceTimeout) as raised:
        list(client.search("Procedure", []))
    assert raised.value.retryable and waits == [0.5, 1.0]


def test_connection_errors_are_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client, _ = client_for(handler, attempts=2)
    with pytest.raises(SourceUnavailable):
        list(client.search("Procedure", []))


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "SOURCE_FHIR_REJECTED"), (401, "SOURCE_FHIR_AUTH"), (404, "SOURCE_FHIR_NOT_FOUND")],
)
def test_operation_outcomes_become_typed_errors_without_diagnostics(status: int, code: str) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "patient SBX-MRN-SECRET not allowed",
                "expression": ["Procedure.subject"],
            }
        ],
    }
    client, _ = client_for(lambda request: httpx.Response(status, json=outcome))
    with pytest.raises(SourceError) as raised:
        list(client.search("Procedure", []))
    assert raised.value.code == code and not raised.value.retryable
    assert "error/invalid at Procedure.subject" in str(raised.value)
    assert "SECRET" not in str(raised.value)


def test_an_error_outcome_with_200_is_an_error() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "fatal", "code": "exception"}],
    }
    client, _ = client_for(lambda request: httpx.Response(200, json=outcome))
    with pytest.raises(SourceError) as raised:
        client.get_payload("Procedure/x")
    assert raised.value.code == "SOURCE_FHIR_OUTCOME"


def test_a_malformed_page_is_fetched_again() -> None:
    good = json.dumps(page(1)).encode()
    answers = iter(
        [httpx.Response(200, content=good[: len(good) // 2]), httpx.Response(200, content=good)]
    )
    client, _ = client_for(lambda request: next(answers))
    pages = list(client.search("Procedure", []))
    assert len(pages) == 1 and client.retries == {"malformed": 1}


def test_a_page_that_stays_malformed_is_a_transient_error() -> None:
    client, _ = client_for(lambda request: httpx.Response(200, content=b'{"resourceType": "Bun'))
    with pytest.raises(SourceUnavailable) as raised:
        list(client.search("Procedure", []))
    assert raised.value.code == "SOURCE_FHIR_PAGE_MALFORMED"


def test_next_links_to_another_origin_are_not_followed() -> None:
    client, _ = client_for(
        lambda request: httpx.Response(200, json=page(1, next_url="https://evil.invalid/r4/x"))
    )
    with pytest.raises(SourceError) as raised:
        list(client.search("Procedure", []))
    assert raised.value.code == "SOURCE_FHIR_LINK_FOREIGN"


def test_every_request_carries_a_timeout() -> None:
    timeouts: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions.get("timeout"))
        return httpx.Response(200, json=page(1))

    client, _ = client_for(handler)
    list(client.search("Procedure", []))
    assert timeouts and all(t and all(v for v in dict(t).values()) for t in timeouts)  # type: ignore[call-overload]


def test_a_window_contains_what_its_bounds_say() -> None:
    window = SearchWindow(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    assert window.contains("2026-01-01T00:00:00Z") and not window.contains("2026-01-02T00:00:00Z")
    assert not window.contains("2025-12-31T23:59:59+00:00")
    assert SearchWindow(None, datetime(2026, 1, 2, tzinfo=UTC)).params() == [
        ("_lastUpdated", "lt2026-01-02T00:00:00Z")
    ]
