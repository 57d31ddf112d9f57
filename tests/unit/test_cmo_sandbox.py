"""Every CMO file of the sandbox program, delivered signed and encrypted, ingested end to end.

The sandbox plays both CMOs (``sandbox/deliver.py``: their keys, OpenPGP, checksum files, the
inbox folders); the hub ingests each CMO feed once. What must come out is exactly what
``truth.json`` says: the staged row counts of every manufacturing.* and quality.* dataset, the
planted COI_UNKNOWN / COI_CHECK_INVALID / malformed records quarantined with their codes, the
re-delivered file registered once as FILE_DUPLICATE, an alert for each deviation with patient
impact — and no canary identifier anywhere the run left something.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tests.conftest import assert_no_canaries

from cmohub.crypto.keyring import Keyring
from cmohub.identity import Actor
from cmohub.notify import Alert
from cmohub.pipelines.cmo import ingest_cmo_feed
from cmohub.pipelines.context import RunContext
from cmohub.sandbox.deliver import deliver_program
from cmohub.settings import load_settings
from cmohub.sources.registry import FileRegistry
from cmohub.vault import open_vault
from cmohub.vault.enrollment import load_enrollments

pytestmark = pytest.mark.slow

FEEDS = ("cmo_acme", "cmo_borealis")
# The mapping engine's name for a record the reader could not split (truth.json: RECORD_MALFORMED).
CODES = {"RECORD_MALFORMED": "MAPPING_RECORD_MALFORMED"}


class Recorder:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


@pytest.fixture(scope="module")
def ingested(sandbox_program: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("cmo-home")
    settings = load_settings(home=home)
    delivered = deliver_program(
        sandbox_program, keyring=Keyring.for_settings(settings), inbox_root=home / "inbox"
    )
    actor = Actor("sandbox-test", "service")
    vault = open_vault(settings, initialize=True)
    vault.init(actor=actor)
    enrollments = (sandbox_program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
    vault.enroll_many(load_enrollments(enrollments), actor=actor)
    notifier = Recorder()
    results = {}
    for feed in FEEDS:
        context = RunContext.for_interval(
            feed,
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
            run_id=f"sandbox__{feed}",
            settings=settings,
        )
        results[feed] = ingest_cmo_feed(
            context, feed=feed, port=vault, notifier=notifier, sleep=lambda _: None
        )
    return {
        "home": home,
        "settings": settings,
        "delivered": delivered,
        "results": results,
        "alerts": notifier.alerts,
        "truth": json.loads((sandbox_program / "truth.json").read_text()),
    }


def test_every_cmo_file_was_delivered_signed_encrypted_and_accepted(
    ingested: dict[str, Any], sandbox_program: Path
) -> None:
    truth = ingested["truth"]
    for feed, fin in (("cmo_acme", "A9996"), ("cmo_borealis", "A9997")):
        assert ingested["delivered"].files[feed] == truth["counts"]["files"][f"cmo/{fin}"]
        verify = ingested["results"][feed]["verify"]
        assert verify["rejected"] == {}
        assert verify["accepted"] + verify["duplicates"] == ingested["delivered"].files[feed]


def test_staged_rows_are_exactly_the_truth(ingested: dict[str, Any]) -> None:
    expected = {
        name: count
        for name, count in ingested["truth"]["counts"]["datasets"].items()
        if name.startswith(("manufacturing.", "quality."))
    }
    lake = Path(ingested["settings"].lake_root)
    on_disk: Counter[str] = Counter()
    for part in lake.glob("staged/*/feed=cmo-*/date=*/run=*/*.parquet"):
        on_disk[part.parts[-5]] += pq.read_metadata(part).num_rows
    assert dict(on_disk) == expected
    reported: Counter[str] = Counter()
    for result in ingested["results"].values():
        reported.update(result["stage"]["staged"])
    assert dict(reported) == expected


def test_planted_faults_are_quarantined_with_their_codes(ingested: dict[str, Any]) -> None:
    planted = Counter(
        CODES.get(f["rule"], f["rule"])
        for f in ingested["truth"]["faults"]
        if str(f["key"].get("file", "")).startswith("cmo/")
        and f["rule"] in ("COI_UNKNOWN", "COI_CHECK_INVALID", "RECORD_MALFORMED")
    )
    assert planted  # the program plants at least one CMO record fault
    quarantined: Counter[str] = Counter()
    for result in ingested["results"].values():
        quarantined.update(result["stage"]["quarantine_codes"])
    assert quarantined == planted
    lake = Path(ingested["settings"].lake_root)
    lines = [
        json.loads(line)
        for path in lake.glob("quarantine/cmo-*/date=*/run=*/records.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert Counter(line["code"] for line in lines) == planted
    for line in lines:  # each can be replayed from the file kept as delivered
        assert list(lake.glob(f"raw/cmo_*/{line['source_sha256'][:2]}/{line['source_sha256']}*"))


def test_the_redelivered_file_is_registered_once_as_a_duplicate(
    ingested: dict[str, Any],
) -> None:
    truth = ingested["truth"]
    copies = [f["key"] for f in truth["faults"] if f["rule"] == "FILE_DUPLICATE"]
    assert len(copies) == truth["counts"]["duplicate_files"]
    findings = []
    for feed, result in ingested["results"].items():
        ledger = json.loads(
            (Path(ingested["settings"].lake_root) / result["stage"]["ledger"]).read_text()
        )
        findings += [f for f in ledger["findings"] if f["code"] == "FILE_DUPLICATE"]
        assert ledger["counts"][feed]["duplicate_files"] == result["stage"]["duplicate_files"]
    assert sorted(f["file"] for f in findings) == sorted(
        c["file"].split("/", 2)[2] + ".pgp" for c in copies
    )
    registry = FileRegistry.from_url(ingested["settings"].hub_database_url)
    for finding in findings:
        assert registry.sightings(finding["sha256"]) == 2  # seen twice, registered once


def test_patient_impact_deviations_raise_one_alert_each(ingested: dict[str, Any]) -> None:
    alerts = ingested["alerts"]
    keys = [a.key for a in alerts]
    assert len(keys) == len(set(keys))
    planted = {
        f["key"]["deviation_id"]
        for f in ingested["truth"]["faults"]
        if f["rule"] == "DEVIATION_OPEN_ON_RELEASED"
    }
    assert {f"deviation:{d}" for d in planted} <= set(keys)
    assert all(a.kind == "deviation_patient_impact" for a in alerts)


def test_nothing_the_runs_left_holds_a_canary(
    ingested: dict[str, Any], sandbox_program: Path
) -> None:
    scanned = assert_no_canaries([ingested["home"]], sandbox_program / "truth.json")
    assert scanned > 100
