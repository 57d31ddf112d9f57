"""``cmohub quarantine``: list what was quarantined, replay it after the cause is fixed.

A CMO delivers its batch export (signed and encrypted, into the feed's inbox); the hub
quarantines the batches whose COI the vault does not know, whose check character is wrong or
whose status the mapping cannot map. The data engineer fixes the vault and replays: what
passes now is staged once, what still fails is quarantined again with its reasons.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tests.conftest import assert_no_canaries
from typer.testing import CliRunner

from cmohub.cli import app
from cmohub.contracts.quarantine import write_quarantine
from cmohub.contracts.report import QuarantineEntry, Reason, SourceRef
from cmohub.crypto import openpgp as pgp
from cmohub.crypto.keyring import Keyring
from cmohub.errors import HubError
from cmohub.identifiers import Coi
from cmohub.identity import Actor, CoiStatus, TokenizeRequest
from cmohub.lake import Lake
from cmohub.pipelines import clinical
from cmohub.pipelines.cmo import ingest_cmo_feed
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.nightly import scorecard_activity
from cmohub.pipelines.replay import list_quarantine, replay_quarantine
from cmohub.pipelines.snapshot import load_quarantine
from cmohub.reconcile.datasets import feed_scorecard_table
from cmohub.sandbox.deliver import write_inbox_file
from cmohub.settings import RawClinicalPolicy, Settings, load_settings
from cmohub.sources.checksums import sums_line
from cmohub.sources.delivery import load_cmo_feed
from cmohub.vault import open_vault

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
FEED = "cmo-acme-batches"
RUN = "scheduled__2026-01-20"
# The golden export's batches: rows 1 and 2 carry valid COIs the test vault does not know
# yet, row 3 a COI with a wrong check character, row 4 a status the mapping does not map.
UNKNOWN_COI = {"ACM-26-00101", "ACM-26-00102"}


class Vault:
    """A vault that knows the COIs it was told; a CMO feed only verifies."""

    def __init__(self) -> None:
        self.known: set[str] = set()
        self.asked: list[str] = []

    def tokenize_many(self, requests: Sequence[TokenizeRequest], *, actor: Actor) -> list[Coi]:
        raise AssertionError("a CMO feed never tokenizes")

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        self.asked.extend(cois)
        return [CoiStatus.KNOWN if c in self.known else CoiStatus.UNKNOWN for c in cois]

    def enroll_what_was_asked(self) -> None:
        """The fix: the sponsor's enrollment of these batches' COIs reached the vault."""
        self.known.update(self.asked)


@pytest.fixture(scope="module")
def key_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("keys-template")
    keyring = Keyring.for_settings(load_settings(home=home))
    keyring.ensure_hub_key()
    keyring.ensure_sandbox_cmo("cmo_acme", name="Sandbox cmo_acme", email="acme@sandbox.invalid")
    return home / "keys"


@pytest.fixture
def settings(tmp_path: Path, key_template: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    home = tmp_path / "home"
    shutil.copytree(key_template, home / "keys")
    monkeypatch.setenv("CMOHUB_HOME", str(home))  # for the CLI
    return load_settings(home=home)


def ingest_batches(settings: Settings, vault: Vault) -> dict[str, Any]:
    """The CMO drops its batch export; the feed runs once as RUN."""
    keyring = Keyring.for_settings(settings)
    plaintext = (GOLDEN / "cmo-acme-batches" / "input.csv").read_bytes()
    sender = pgp.load_secret_key(keyring.sandbox_path("cmo_acme"))
    message = pgp.encrypt_to(plaintext, [keyring.hub_public()], sender)
    folder = load_cmo_feed("cmo_acme").inbox_folder(settings.home_dir / "inbox")
    name = "2026-01-20/ACME_BATCHES_20260120.csv.pgp"
    write_inbox_file(folder, name, message)
    write_inbox_file(folder, f"{name}.sha256", sums_line(Path(name).name, message).encode())
    context = RunContext.for_interval(
        "cmo_acme",
        datetime(2026, 1, 20, tzinfo=UTC),
        datetime(2026, 1, 21, tzinfo=UTC),
        run_id=RUN,
        settings=settings,
    )
    return ingest_cmo_feed(context, feed="cmo_acme", port=vault, sleep=lambda _: None)


def quarantined(settings: Settings, relative: str) -> list[dict[str, Any]]:
    path = Path(settings.lake_root, relative)
    return [json.loads(line) for line in path.read_text().splitlines()]


def staged_batches(settings: Settings) -> list[str]:
    """Batch IDs of every staged manufacturing.batch row, across all runs."""
    return sorted(
        row["batch_id"]
        for part in Path(settings.lake_root, "staged", "manufacturing.batch").rglob("*.parquet")
        for row in pq.read_table(part).to_pylist()
    )


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["quarantine", *args])


def test_list_counts_quarantined_records_by_feed_run_and_reason(settings: Settings) -> None:
    ingest_batches(settings, Vault())
    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    (run,) = json.loads(listed.output)
    assert (run["feed"], run["run_id"], run["date"], run["records"]) == (
        FEED,
        RUN,
        "2026-01-20",
        4,
    )
    assert run["codes"] == {"COI_CHECK_INVALID": 1, "COI_UNKNOWN": 2, "MAPPING_VALUE_UNMAPPED": 1}

    text = cli("list", "--feed", FEED).output
    assert f"{FEED}  2026-01-20  run {RUN}  4 record(s)" in text
    assert "COI_UNKNOWN" in text and text.count("\n") == 4
    assert cli("list", "--feed", "cmo-acme-qc-results").output == "no quarantined records\n"
    assert cli("list", "--since", "2026-01-21").output == "no quarantined records\n"


def test_a_batch_quarantined_for_an_unknown_coi_is_staged_once_the_vault_knows_it(
    settings: Settings,
) -> None:
    vault = Vault()
    first = ingest_batches(settings, vault)["stage"]
    assert first["quarantine_codes"]["COI_UNKNOWN"] == 2
    assert staged_batches(settings) == []

    vault.enroll_what_was_asked()
    result = replay_quarantine(settings, feed=FEED, run_id=RUN, port=vault)

    assert result.run_id == f"replay-{RUN}-1"
    assert (result.received, result.valid, result.quarantined) == (4, 2, 2)
    assert staged_batches(settings) == sorted(UNKNOWN_COI)
    (part,) = result.parts
    assert part.startswith(f"staged/manufacturing.batch/feed={FEED}/date=2026-01-20/")
    # What still fails is quarantined again, under the replay run, with its reasons.
    assert result.quarantine is not None and f"run=replay-{RUN}-1" in result.quarantine
    again = {line["key"]["batch_id"]: line for line in quarantined(settings, result.quarantine)}
    assert {k: v["code"] for k, v in again.items()} == {
        "ACM-26-00103": "COI_CHECK_INVALID",
        "ACM-26-00104": "MAPPING_VALUE_UNMAPPED",
    }
    assert again["ACM-26-00104"]["field"] == "status"
    assert again["ACM-26-00103"]["source_locator"] == "row=3"
    ledger = json.loads(Path(settings.lake_root, result.ledger or "").read_text())
    assert ledger["counts"][FEED] == {**ledger["counts"][FEED], "received": 4, "valid": 2}


def test_replaying_a_run_again_stages_nothing_twice(settings: Settings) -> None:
    vault = Vault()
    ingest_batches(settings, vault)
    vault.enroll_what_was_asked()
    first = replay_quarantine(settings, feed=FEED, run_id=RUN, port=vault)
    second = replay_quarantine(settings, feed=FEED, run_id=RUN, port=vault)

    # The second replay reads what the first left quarantined, not the original run.
    assert second.read_from == first.run_id
    assert second.run_id == f"replay-{RUN}-2"
    assert (second.received, second.valid, second.quarantined) == (2, 0, 2)
    assert staged_batches(settings) == sorted(UNKNOWN_COI)  # each batch staged once
    # Naming a replay run replays the same chain.
    third = replay_quarantine(settings, feed=FEED, run_id=f"replay-{RUN}-1", port=vault)
    assert (third.run_id, third.valid) == (f"replay-{RUN}-3", 0)

    listed = [(q.run_id, q.records, q.current) for q in list_quarantine(Lake(settings.lake_root))]
    assert listed == [
        (RUN, 4, False),
        (f"replay-{RUN}-1", 2, False),
        (f"replay-{RUN}-2", 2, False),
        (third.run_id, 2, True),  # what is still quarantined, and what the nightly counts
    ]


def test_the_nightly_counts_what_is_still_quarantined_after_a_replay(settings: Settings) -> None:
    """Operations must not see a replayed record as an open exception, nor count it twice."""
    vault = Vault()
    ingest_batches(settings, vault)
    lake = Lake(settings.lake_root)
    day = datetime(2026, 1, 21, tzinfo=UTC).date()

    def scorecard() -> dict[str, Any]:
        table = feed_scorecard_table([FEED], scorecard_activity(lake, day))
        (row,) = [r for r in table.to_pylist() if r["feed"] == FEED]
        return row

    assert len(load_quarantine(lake, up_to=day)) == 4
    assert scorecard()["records_quarantined"] == 4
    vault.enroll_what_was_asked()
    replay_quarantine(settings, feed=FEED, run_id=RUN, port=vault)
    replay_quarantine(settings, feed=FEED, run_id=RUN, port=vault)  # changes nothing more

    still = load_quarantine(lake, up_to=day)
    assert sorted(line["key"]["batch_id"] for line in still) == ["ACM-26-00103", "ACM-26-00104"]
    assert all(f"run=replay-{RUN}-2" in line["_file"] for line in still)
    row = scorecard()
    assert (row["records_received"], row["records_valid"], row["records_quarantined"]) == (4, 2, 2)
    assert row["deliveries"] == 1  # a replay is not a delivery


def test_a_replay_that_stopped_before_its_ledger_is_redone_in_place(settings: Settings) -> None:
    vault = Vault()
    ingest_batches(settings, vault)
    vault.enroll_what_was_asked()
    first = replay_quarantine(settings, feed=FEED, run_id=RUN, port=vault)
    Path(settings.lake_root, first.ledger or "").unlink()  # as if it died before the end

    redone = replay_quarantine(settings, feed=FEED, run_id=RUN, port=vault)
    assert (redone.run_id, redone.read_from) == (first.run_id, RUN)
    assert redone.parts == first.parts  # the same part rewritten, not a second one
    assert staged_batches(settings) == sorted(UNKNOWN_COI)


def test_a_replay_without_the_raw_file_fails_with_a_clear_code(settings: Settings) -> None:
    ingest_batches(settings, Vault())
    for raw in Path(settings.lake_root, "raw", "cmo_acme").rglob("*.enc"):
        raw.unlink()

    outcome = cli("replay", "--feed", FEED, "--run", RUN)
    assert isinstance(outcome.exception, HubError)
    assert outcome.exception.code == "RAW_NOT_KEPT"
    assert "raw/cmo_acme/" in str(outcome.exception)
    assert not Path(settings.lake_root, "runs", f"replay-{RUN}-1").exists()

    with pytest.raises(HubError) as missing:
        replay_quarantine(settings, feed=FEED, run_id="no-such-run", port=Vault())
    assert missing.value.code == "QUARANTINE_NOT_FOUND"


def test_feeds_replay_cannot_serve_are_refused_by_name(settings: Settings) -> None:
    lake = Lake(settings.lake_root)
    entry = QuarantineEntry(
        "master.site",
        SourceRef("ab" * 32, "row=3"),
        (Reason("MAPPING_VALUE_UNMAPPED", "mapping:master-sites", None),),
    )
    day = datetime(2026, 1, 20, tzinfo=UTC).date()
    write_quarantine(lake, [entry], feed="master-sites", day=day, run_id=RUN)
    with pytest.raises(HubError) as refused:
        replay_quarantine(settings, feed="master-sites", run_id=RUN, port=Vault())
    assert refused.value.code == "REPLAY_UNSUPPORTED"
    assert "master-sites" in str(refused.value)
    assert "every nightly" in str(refused.value)  # what to do instead
    assert "logistics-epcis-sensor" in str(refused.value)  # what is supported


@pytest.mark.parametrize(
    ("policy", "code"),
    [(RawClinicalPolicy.NONE, "RAW_NOT_KEPT"), (RawClinicalPolicy.ENCRYPTED, None)],
)
def test_clinical_replay_says_what_is_missing_and_leaks_no_identifier(
    sandbox_program: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: RawClinicalPolicy,
    code: str | None,
) -> None:
    """Payloads not kept: a clear refusal; kept (encrypted): replayed (more in
    test_quarantine_replay_clinical.py). Either way no identifier is shown."""
    home = tmp_path / "home"
    monkeypatch.setenv("CMOHUB_HOME", str(home))
    monkeypatch.setenv("CMOHUB_RAW_CLINICAL", policy.value)
    settings = load_settings(home=home, sandbox_dir=sandbox_program, raw_clinical=policy)
    with open_vault(settings, initialize=True) as vault:
        vault.init(actor=Actor("test", "service"))
    start = datetime(2026, 6, 1, tzinfo=UTC)
    run = "scheduled__2026-06-01"
    context = RunContext("clinical_sync", run, start, start + timedelta(hours=1), settings=settings)
    clinical.import_enrollments(context)
    clinical.sync_fhir(context)

    listed = cli("list", "--json")
    assert [q["feed"] for q in json.loads(listed.output)] == ["clinical-fhir-procedure"]
    outcome = cli("replay", "--feed", "clinical-fhir-procedure", "--run", run)
    if code is None:  # the malformed resource is still malformed: quarantined again
        assert outcome.exit_code == 0, outcome.output
        assert "1 received = 0 staged + 1 quarantined again" in outcome.output
    else:
        assert isinstance(outcome.exception, HubError)
        assert outcome.exception.code == code
        assert "CMOHUB_RAW_CLINICAL=none" in str(outcome.exception)
        assert not Path(settings.lake_root, "runs", f"replay-{run}-1").exists()

    shown = tmp_path / "shown.txt"
    shown.write_text(listed.output + outcome.output + str(outcome.exception))
    assert_no_canaries(
        [home, shown],
        sandbox_program / "truth.json",
        exclude=[home / "vault.sqlite", home / "keys"],
    )


class Enrolled:
    """The sponsor's enrolled COIs (the vault, for feeds that only verify)."""

    def __init__(self, cois: set[str]) -> None:
        self.cois = cois

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        return [CoiStatus.KNOWN if c in self.cois else CoiStatus.UNKNOWN for c in cois]

    def tokenize_many(self, requests: Sequence[object], *, actor: Actor) -> list[object]:
        raise AssertionError("logistics feeds never tokenize")


def test_courier_shipments_are_replayed_from_the_kept_api_pages(
    sandbox_program: Path, tmp_path: Path
) -> None:
    from cmohub.pipelines.logistics import sync_courier
    from cmohub.sandbox.servers.courier import CourierServer
    from cmohub.sensitive import Sensitive
    from cmohub.sources.endpoint import SourceEndpoint

    settings = load_settings(home=tmp_path / "home")
    lines = (sandbox_program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
    enrolled = {json.loads(line)["coi"] for line in lines if line.strip()}
    courier = CourierServer(sandbox_program)
    end = datetime(2026, 3, 1, tzinfo=UTC)
    context = RunContext.for_interval("logistics_sync", end, end, run_id="run-1", settings=settings)
    with courier.running():
        synced = sync_courier(
            context,
            endpoint=SourceEndpoint(
                courier.base_url, courier.client_id, Sensitive(courier.client_secret)
            ),
            port=Enrolled(set()),  # the enrollments had not reached the vault yet
            since=datetime(2026, 1, 1, tzinfo=UTC),
        )
    shipments = synced["feeds"]["logistics-courier-shipments"]
    assert shipments["valid"] == 0 and shipments["quarantined"] > 0

    feed = "logistics-courier-shipments"
    replayed = replay_quarantine(settings, feed=feed, run_id="run-1", port=Enrolled(enrolled))
    assert (replayed.received, replayed.valid) == (shipments["quarantined"],) * 2
    assert replayed.quarantine is None
    staged = [
        row
        for part in Path(settings.lake_root, "staged", "logistics.shipment").rglob("*.parquet")
        for row in pq.read_table(part).to_pylist()
    ]
    assert len(staged) == shipments["quarantined"] and {r["coi"] for r in staged} <= enrolled

    # Everything is staged now: a second replay has nothing left and writes nothing.
    again = replay_quarantine(settings, feed=feed, run_id="run-1", port=Enrolled(enrolled))
    assert (again.run_id, again.read_from) == (None, replayed.run_id)
    assert not Path(settings.lake_root, "runs", "replay-run-1-2").exists()
