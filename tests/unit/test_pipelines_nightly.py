"""The nightly pipeline over a lake staged with a sandbox program's ground truth.

Ingest is bypassed (the tables come straight from the world model), so this pins reconcile and
publish on their own: every table and cold-chain fault is found and nothing else, the release
verifies, and re-running the interval gives the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from cmohub.errors import CryptoError
from cmohub.identity import Actor
from cmohub.lake import Lake
from cmohub.pipelines import nightly
from cmohub.pipelines.context import RunContext
from cmohub.publish.release import verify_release
from cmohub.publish.signing import hub_signer
from cmohub.reconcile.scoring import score
from cmohub.sandbox.faults import Fault
from cmohub.sandbox.program import ProgramConfig
from cmohub.sandbox.tables import all_tables, build_journeys
from cmohub.settings import load_settings
from cmohub.vault import open_vault

INGEST_RULES = {"COI_CHECK_INVALID", "COI_UNKNOWN", "FILE_DUPLICATE", "RECORD_MALFORMED"}


class TestSigner:
    fingerprint = "TEST-SPONSOR"

    def sign_detached(self, data: bytes) -> bytes:
        return hmac.new(b"k", data, hashlib.sha256).hexdigest().encode()

    def verify_detached(self, data: bytes, signature: bytes) -> None:
        if not hmac.compare_digest(self.sign_detached(data), signature):
            raise CryptoError("bad signature", code="CRYPTO_BAD_SIGNATURE")


@pytest.fixture(scope="module")
def staged(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[dict[str, object]], datetime]:
    config = ProgramConfig(
        patients=40, days=30, seed=1, start=date(2026, 1, 5), faults=frozenset(Fault)
    )
    builder, journeys = build_journeys(config)
    home = tmp_path_factory.mktemp("home")
    lake = Lake(home / "lake")
    for dataset, table in all_tables(builder, journeys).items():
        folder = lake.staged_dir(dataset, feed="sandbox", day=config.start, run_id="truth")
        lake.write_parquet(folder / "part-000000000000.parquet", table)
    vault = open_vault(load_settings(home=home), initialize=True)
    vault.init(actor=Actor("dana", "data_engineer"))
    vault.close()
    faults = [
        {"rule": p.rule.value, "key": dict(p.key), "fault": p.fault.value}
        for j in journeys
        for p in j.planted
        if p.rule.value not in INGEST_RULES
    ]
    as_of = datetime.combine(config.last_day + timedelta(days=1), time(3), tzinfo=UTC)
    return home, faults, as_of


def context(home: Path, as_of: datetime, run: str) -> RunContext:
    return RunContext.for_interval(
        "nightly_reconciliation",
        as_of - timedelta(days=1),
        as_of,
        run_id=run,
        settings=load_settings(home=home),
    )


def test_reconcile_finds_exactly_the_planted_faults_and_the_release_verifies(
    staged: tuple[Path, list[dict[str, object]], datetime],
) -> None:
    home, faults, as_of = staged
    ctx = context(home, as_of, "scheduled__1")
    summary = nightly.reconcile(ctx)
    lake = ctx.lake
    exceptions = lake.read_parquet(lake.run_dir(ctx.path_run_id) / "nightly" / "exceptions.parquet")
    result = score(exceptions.to_pylist(), faults)
    assert (result.precision, result.recall) == (1.0, 1.0), (result.missed, result.unexpected)
    assert summary["exceptions"] == len(faults)

    published = nightly.publish(ctx, signer=TestSigner())
    release = Path(published["path"])
    verified = verify_release(release, TestSigner())
    assert verified.ok, verified.failure
    names = {entry["path"] for entry in verified.manifest["files"]}
    assert {
        "datasets/exceptions.parquet",
        "datasets/coi_journey.parquet",
        "report/index.html",
    } <= names
    assert "datasets/canonical/logistics.temperature_reading.parquet" in names
    assert any(n.startswith("report/packets/") for n in names)  # one per excursion episode
    assert verified.manifest["audit_checkpoint"]["size"] >= 1
    assert all(not v["failed_checks"] for v in verified.manifest["validation"].values())
    report = (release / "report/index.html").read_text()
    assert "TEMPERATURE_EXCURSION" in report and "decision packet" in report


def test_rerunning_the_interval_gives_the_same_bytes(
    staged: tuple[Path, list[dict[str, object]], datetime],
) -> None:
    home, _, as_of = staged
    first_ctx = context(home, as_of, "scheduled__a")
    nightly.reconcile(first_ctx)
    first = nightly.publish(first_ctx, signer=TestSigner())
    snapshot = {
        p.relative_to(first["path"]): p.read_bytes()
        for p in Path(first["path"]).rglob("*")
        if p.is_file()
    }
    again_ctx = context(home, as_of, "manual__b")  # another run of the same interval
    nightly.reconcile(again_ctx)
    again = nightly.publish(again_ctx, signer=TestSigner())
    assert again["replaced"] and again["manifest_sha256"] == first["manifest_sha256"]
    rerun = {
        p.relative_to(again["path"]): p.read_bytes()
        for p in Path(again["path"]).rglob("*")
        if p.is_file()
    }
    assert rerun == snapshot


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CMOHUB_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-c", "from cmohub.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_a_sponsor_signed_release_verifies_with_the_cli_and_names_tampering(
    staged: tuple[Path, list[dict[str, object]], datetime], tmp_path: Path
) -> None:
    home, _, as_of = staged
    ctx = context(home, as_of, "scheduled__signed")
    nightly.reconcile(ctx)
    first = nightly.publish(ctx, signer=hub_signer(ctx.settings, as_of=as_of))
    again = nightly.publish(ctx, signer=hub_signer(ctx.settings, as_of=as_of))
    signature = Path(again["path"]) / "manifest.json.asc"
    assert again["manifest_sha256"] == first["manifest_sha256"]
    ok = cli(home, "publish", "verify", again["path"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified" in ok.stdout and "audit checkpoint" in ok.stdout
    copy = tmp_path / "copy"
    shutil.copytree(again["path"], copy)
    report = copy / "report" / "index.html"
    report.write_text(report.read_text().replace("critical", "minor"))
    bad = cli(home, "publish", "verify", str(copy))
    assert (
        bad.returncode == 1
        and "PUBLISH_HASH_MISMATCH" in bad.stdout
        and "report/index.html" in bad.stdout
    )
    assert signature.read_bytes().startswith(b"-----BEGIN PGP SIGNATURE-----")


def test_the_dossier_of_a_faulty_coi_tells_its_whole_story(
    staged: tuple[Path, list[dict[str, object]], datetime], tmp_path: Path
) -> None:
    home, faults, as_of = staged
    ctx = context(home, as_of, "scheduled__dossier")
    nightly.reconcile(ctx)
    release = Path(nightly.publish(ctx, signer=TestSigner())["path"])
    coi = next(str(f["key"]["coi"]) for f in faults if f["rule"] == "TEMPERATURE_EXCURSION")
    out = tmp_path / "dossier.html"
    result = cli(home, "coi", "report", coi, "--release", str(release), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    html = out.read_text()
    for section in (
        "Custody events and handoffs",
        "Temperature —",
        "Batch steps",
        "Reagent lots",
        "QC results against the specification in force",
        "Release decision",
        "Infusion",
        "Temperature excursion beyond budget",
    ):
        assert section in html, section
    unknown = cli(home, "coi", "report", "CHA999926ZZZZZZ" + "0", "--release", str(release))
    assert unknown.returncode != 0
