from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cmohub.errors import StoreUnavailable
from cmohub.sources.registry import FileRegistry

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
SHA = "a" * 64


def test_same_bytes_are_registered_once_under_any_name(tmp_path: Path) -> None:
    registry = FileRegistry.from_url(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    first = registry.register(
        SHA, size=10, feed="cmo-acme", name="batches-20260302.csv", received_at=T0, run_id="r1"
    )
    again = registry.register(
        SHA,
        size=10,
        feed="cmo-acme",
        name="batches-20260302-resend.csv",
        received_at=T0 + timedelta(days=1),
        run_id="r2",
    )
    assert first.new and not again.new
    assert (again.first_name, again.first_run_id, again.first_received_at) == (
        "batches-20260302.csv",
        "r1",
        T0,
    )
    assert registry.sightings(SHA) == 2
    assert [d["name"] for d in registry.deliveries("cmo-acme", T0, T0 + timedelta(days=7))] == [
        "batches-20260302.csv"
    ]


def test_concurrent_registrations_yield_exactly_one_new(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    FileRegistry.from_url(url)
    results: list[bool] = []

    def receive(n: int) -> None:
        registry = FileRegistry.from_url(url)
        results.append(
            registry.register(
                SHA, size=1, feed="f", name=f"copy-{n}", received_at=T0, run_id=f"r{n}"
            ).new
        )

    threads = [threading.Thread(target=receive, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_unreachable_database_is_transient() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        FileRegistry.from_url("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert caught.value.retryable
