"""A source down for a whole run: that feed fails cleanly, and the nightly still publishes.

The courier API answers 503 to everything. ``sync_courier`` retries, then fails with a
Transient error that names the source (Airflow retries the task; the other feeds are not
affected), stages nothing and leaves its cursor where it was. The nightly reconciliation of the
same interval completes, and its scorecard says the courier feeds delivered nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cmohub.errors import CryptoError, SourceUnavailable
from cmohub.identity import Actor
from cmohub.pipelines import nightly
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.logistics import sync_courier
from cmohub.pipelines.state import load_cursor
from cmohub.sandbox.servers.base import FaultPlan
from cmohub.sandbox.servers.courier import CourierServer
from cmohub.sensitive import Sensitive
from cmohub.settings import load_settings
from cmohub.sources.endpoint import SourceEndpoint
from cmohub.sources.rest import RetryPolicy
from cmohub.vault import open_vault

AT = datetime(2026, 4, 11, 3, tzinfo=UTC)


class Signer:
    fingerprint = "TEST"

    def sign_detached(self, data: bytes) -> bytes:
        return hmac.new(b"k", data, hashlib.sha256).hexdigest().encode()

    def verify_detached(self, data: bytes, signature: bytes) -> None:
        if signature != self.sign_detached(data):
            raise CryptoError("bad", code="CRYPTO_BAD_SIGNATURE")


def test_a_feed_that_is_down_fails_alone_and_the_scorecard_says_so(
    sandbox_program: Path, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path / "home", sandbox_dir=sandbox_program)
    with open_vault(settings, initialize=True) as vault:
        vault.init(actor=Actor("test", "data_engineer"))
    courier = CourierServer(sandbox_program, faults=FaultPlan(unavailable_every=1))
    context = RunContext.for_interval(
        "logistics_sync", AT - timedelta(minutes=15), AT, run_id="down", settings=settings
    )
    with courier.running():
        endpoint = SourceEndpoint(
            courier.base_url, login=courier.client_id, password=Sensitive(courier.client_secret)
        )
        with pytest.raises(SourceUnavailable) as raised:
            sync_courier(
                context, endpoint=endpoint, retry=RetryPolicy(attempts=3, sleep=lambda s: None)
            )
    assert raised.value.retryable
    assert "503" in str(raised.value) or "unavailable" in str(raised.value).lower()
    assert courier.stats.requests >= 3  # it retried before giving up
    lake = tmp_path / "home" / "lake"
    assert not (lake / "staged").exists() or not any((lake / "staged").rglob("*.parquet"))
    assert load_cursor(context.lake, "logistics-courier-shipments") is None

    tonight = RunContext.for_interval(
        "nightly_reconciliation", AT - timedelta(days=1), AT, run_id="nightly", settings=settings
    )
    nightly.reconcile(tonight)
    released = nightly.publish(tonight, signer=Signer())
    scorecard = {
        row["feed"]: row
        for row in context.lake.read_parquet(
            context.lake.path(f"published/{released['release']}/datasets/feed_scorecard.parquet")
        ).to_pylist()
    }
    for feed in ("logistics-courier-shipments", "logistics-courier-legs"):
        assert scorecard[feed]["deliveries"] == 0 and scorecard[feed]["records_received"] == 0
