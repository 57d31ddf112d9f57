"""The CMO feed pipeline on small deliveries: what a person at the sponsor would notice.

Each test gets its own CMOHUB_HOME with the hub key and the two sandbox CMO keys (made once per
module), drops signed and encrypted files into a feed's inbox as a CMO would, and runs the feed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmohub.crypto import openpgp as pgp
from cmohub.crypto.keyring import Keyring
from cmohub.identifiers import Coi
from cmohub.identity import Actor, CoiStatus, TokenizeRequest
from cmohub.lake import Lake
from cmohub.notify import Alert
from cmohub.pipelines import cmo as pipeline
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.replay import list_quarantine, replay_quarantine
from cmohub.sandbox.deliver import CorpusKeys, bad_message_corpus, write_inbox_file
from cmohub.settings import Settings, load_settings
from cmohub.sources.checksums import sums_line
from cmohub.sources.delivery import load_cmo_feed

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
KNOWN = {str(Coi("A9999", "26", "BX0001"))}
BOM = "\ufeff"


class Vault:
    """Knows the golden fixtures' COI; never tokenizes (CMO feeds only verify)."""

    def tokenize_many(self, requests: Sequence[TokenizeRequest], *, actor: Actor) -> list[Coi]:
        raise AssertionError("a CMO feed never tokenizes")

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        return [CoiStatus.KNOWN if c in KNOWN else CoiStatus.UNKNOWN for c in cois]


class Recorder:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


@pytest.fixture(scope="module")
def key_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("keys-template")
    keyring = Keyring.for_settings(load_settings(home=home))
    keyring.ensure_hub_key()
    for feed in ("cmo_acme", "cmo_borealis"):
        keyring.ensure_sandbox_cmo(feed, name=f"Sandbox {feed}", email=f"{feed}@sandbox.invalid")
    return home / "keys"


@dataclasses.dataclass
class Hub:
    home: Path
    settings: Settings
    keyring: Keyring
    notifier: Recorder
    runs: int = 0

    @property
    def lake(self) -> Path:
        return Path(self.settings.lake_root)

    def cmo(self, feed: str) -> pgp.SecretKey:
        return pgp.load_secret_key(self.keyring.sandbox_path(feed))

    def deliver(
        self,
        feed: str,
        relative: str,
        plaintext: bytes,
        *,
        message: bytes | None = None,
        checksum: bool = True,
        signer: pgp.SecretKey | None = None,
    ) -> str:
        """Drop ``<relative>.pgp`` (and its checksum) into the feed's inbox, like the CMO."""
        config = load_cmo_feed(feed)
        if message is None:
            message = pgp.encrypt_to(
                plaintext, [self.keyring.hub_public()], signer or self.cmo(feed)
            )
        folder = config.inbox_folder(self.home / "inbox")
        delivered = f"{relative}.pgp"
        write_inbox_file(folder, delivered, message)
        name = Path(delivered).name
        if checksum and config.options.checksums == "sidecar":
            write_inbox_file(folder, f"{delivered}.sha256", sums_line(name, message).encode())
        elif checksum and config.options.checksums == "manifest":
            manifest = folder / Path(delivered).parent / config.options.manifest_name
            previous = manifest.read_text() if manifest.exists() else ""
            write_inbox_file(
                folder,
                str(Path(delivered).parent / config.options.manifest_name),
                (previous + sums_line(name, message)).encode(),
            )
        return delivered

    def run(self, feed: str, **kwargs: Any) -> dict[str, Any]:
        self.runs += 1
        context = RunContext.for_interval(
            feed,
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
            run_id=f"test__{feed}__{self.runs}",
            settings=self.settings,
        )
        kwargs.setdefault("sleep", lambda _: None)
        return pipeline.ingest_cmo_feed(
            context, feed=feed, port=Vault(), notifier=self.notifier, **kwargs
        )

    def lake_text(self, *, outside_raw: bool = True) -> bytes:
        return b"".join(
            p.read_bytes()
            for p in self.lake.rglob("*")
            if p.is_file() and not (outside_raw and p.relative_to(self.lake).parts[0] == "raw")
        )


@pytest.fixture
def hub(tmp_path: Path, key_template: Path) -> Hub:
    home = tmp_path / "home"
    shutil.copytree(key_template, home / "keys")
    settings = load_settings(home=home)
    return Hub(home, settings, Keyring.for_settings(settings), Recorder())


def _xml(name: str) -> bytes:
    return (GOLDEN / name / "input.xml").read_bytes()


def _csv(name: str) -> bytes:
    return (GOLDEN / name / "input.csv").read_bytes()


def test_a_batch_record_feeds_four_datasets_and_its_deviation_alerts_once(hub: Hub) -> None:
    hub.deliver("cmo_borealis", "2026-02-03/BPR_BOR2600101.xml", _xml("cmo-borealis-deviations"))
    hub.deliver("cmo_borealis", "2026-02-03/LIMS_20260203.csv", _csv("cmo-borealis-qc-results"))
    result = hub.run("cmo_borealis")
    stage = result["stage"]
    assert stage["staged"] == {
        "manufacturing.batch": 1,
        "manufacturing.batch_step": 2,
        "manufacturing.deviation": 2,
        "manufacturing.material_consumption": 3,
        "quality.qc_result": 5,
    }
    assert stage["quarantine_codes"] == {
        "MAPPING_RECORD_MALFORMED": 1,
        "MAPPING_VALUE_UNMAPPED": 2,  # a Risk="Medium" deviation, an unknown assay
    }
    assert [a.key for a in hub.notifier.alerts] == ["deviation:AVV-000102"]
    assert "AVV-000102" in hub.notifier.alerts[0].title

    # The CMO sends the same batch record again (re-encrypted, under another name).
    hub.deliver(
        "cmo_borealis", "2026-02-05/BPR_BOR2600101_RESENT.xml", _xml("cmo-borealis-deviations")
    )
    again = hub.run("cmo_borealis")
    assert again["verify"] == {**again["verify"], "accepted": 0, "duplicates": 1}
    assert again["stage"]["staged"] == {}
    assert again["stage"]["duplicate_files"] == 1
    assert len(hub.notifier.alerts) == 1  # no second alert for the same deviation
    ledger = json.loads((hub.lake / again["stage"]["ledger"]).read_text())
    duplicate = next(f for f in ledger["findings"] if f["code"] == "FILE_DUPLICATE")
    assert duplicate["file"] == "2026-02-05/BPR_BOR2600101_RESENT.xml.pgp"
    assert duplicate["original"] == "2026-02-03/BPR_BOR2600101.xml.pgp"


def test_files_are_kept_as_delivered_and_registered_by_content(hub: Hub) -> None:
    delivered = hub.deliver(
        "cmo_acme", "2026-01-20/ACME_LIMS_20260120.csv", _csv("cmo-acme-qc-results")
    )
    result = hub.run("cmo_acme")
    accepted = json.loads((hub.lake / result["verify"]["report"]).read_text())["accepted"]
    assert [a["path"] for a in accepted] == [delivered]
    raw = hub.lake / accepted[0]["raw"]
    inbox = load_cmo_feed("cmo_acme").inbox_folder(hub.home / "inbox") / delivered
    assert raw.read_bytes() == inbox.read_bytes()  # the ciphertext, byte for byte
    assert raw.name == f"{accepted[0]['sha256']}.enc"  # found under the content's hash
    assert accepted[0]["signer"] == hub.cmo("cmo_acme").fingerprint


def test_partial_uploads_and_files_waiting_for_their_checksum_are_left_for_later(
    hub: Hub,
) -> None:
    folder = load_cmo_feed("cmo_acme").inbox_folder(hub.home / "inbox") / "2026-01-20"
    folder.mkdir(parents=True)
    (folder / "ACME_LIMS_20260120.csv.pgp.part").write_bytes(b"\x85\x01")  # still uploading
    hub.deliver("cmo_acme", "2026-01-20/ACME_LIMS_20260120.csv", _csv("cmo-acme-qc-results"),
                checksum=False)  # fmt: skip
    first = hub.run("cmo_acme")
    assert (first["fetch"]["fetched"], first["fetch"]["pending"]) == (0, 1)
    assert first["stage"]["received"] == 0
    message = (folder / "ACME_LIMS_20260120.csv.pgp").read_bytes()
    write_inbox_file(
        folder, "ACME_LIMS_20260120.csv.pgp.sha256",
        sums_line("ACME_LIMS_20260120.csv.pgp", message).encode(),
    )  # fmt: skip
    second = hub.run("cmo_acme")
    assert (second["fetch"]["fetched"], second["fetch"]["pending"]) == (1, 0)
    assert second["stage"]["staged"] == {"quality.qc_result": 4}
    third = hub.run("cmo_acme")
    assert third["fetch"]["fetched"] == 0  # seen: not downloaded again


def test_a_file_still_growing_between_two_listings_is_not_fetched(hub: Hub) -> None:
    delivered = hub.deliver(
        "cmo_acme", "2026-01-20/ACME_LIMS_20260120.csv", _csv("cmo-acme-qc-results")
    )
    target = load_cmo_feed("cmo_acme").inbox_folder(hub.home / "inbox") / delivered

    def upload_continues(_: float) -> None:
        with target.open("ab") as handle:
            handle.write(b"more bytes")

    growing = hub.run("cmo_acme", sleep=upload_continues)
    assert growing["fetch"]["fetched"] == 0
    assert growing["stage"]["files"] == 0


def test_a_checksum_that_does_not_match_rejects_the_file(hub: Hub) -> None:
    folder = load_cmo_feed("cmo_acme").inbox_folder(hub.home / "inbox")
    delivered = hub.deliver(
        "cmo_acme", "2026-01-20/ACME_LIMS_20260120.csv", _csv("cmo-acme-qc-results"), checksum=False
    )
    write_inbox_file(folder, f"{delivered}.sha256", sums_line(delivered, b"other bytes").encode())
    result = hub.run("cmo_acme")
    assert result["verify"]["rejected"] == {"FILE_CHECKSUM_MISMATCH": 1}
    assert result["stage"]["received"] == 0


def test_bad_messages_are_rejected_and_nothing_of_them_reaches_staging(hub: Hub) -> None:
    marker = b"MARKER-DO-NOT-STAGE-7f3a"
    plaintext = _csv("cmo-acme-qc-results").replace(b"LIMS-0000101", marker)
    keys = CorpusKeys(
        cmo=hub.cmo("cmo_acme"),
        hub=hub.keyring.hub_secret(),
        other=hub.cmo("cmo_borealis"),
        expired=hub.cmo("cmo_borealis"),
    )
    corpus = [
        b
        for b in bad_message_corpus(plaintext, keys)
        if b.name not in ("expired_key", "revoked_key")
    ]
    for number, bad in enumerate(corpus):
        hub.deliver(
            "cmo_acme", f"2026-01-20/ACME_LIMS_202601{number:02d}.csv", b"", message=bad.message
        )
    result = hub.run("cmo_acme")
    expected: dict[str, int] = {}
    for bad in corpus:
        expected[bad.code] = expected.get(bad.code, 0) + 1
    assert result["verify"]["rejected"] == expected
    assert result["stage"]["received"] == 0
    assert result["stage"]["files"] == len(corpus)
    assert marker not in hub.lake_text(outside_raw=True)
    ledger = json.loads((hub.lake / result["stage"]["ledger"]).read_text())
    assert sorted(f["code"] for f in ledger["findings"]) == sorted(b.code for b in corpus)


def test_a_revoked_sender_key_stops_the_feed(hub: Hub) -> None:
    revoked = pgp.revoke_key(hub.cmo("cmo_acme"))
    hub.keyring.import_sender("cmo_acme", revoked, fingerprint=revoked.fingerprint)
    hub.deliver("cmo_acme", "2026-01-20/ACME_LIMS_20260120.csv", _csv("cmo-acme-qc-results"))
    result = hub.run("cmo_acme")
    assert result["verify"]["rejected"] == {"CRYPTO_KEY_REVOKED": 1}


def test_a_file_no_mapping_can_read_is_quarantined_whole_and_the_run_goes_on(hub: Hub) -> None:
    record = _xml("cmo-borealis-deviations")
    bomb = (
        b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n'
        b'<BatchProductionRecord xmlns="http://www.wbf.org/xml/B2MML-V0401">&lol2;'
        b"</BatchProductionRecord>\n"
    )
    hub.deliver("cmo_borealis", "2026-02-03/BPR_BOR2600101.xml", record[: len(record) // 2])
    hub.deliver("cmo_borealis", "2026-02-03/BPR_BOR2600199.xml", bomb)
    hub.deliver("cmo_borealis", "2026-02-03/LIMS_20260203.csv", _csv("cmo-borealis-qc-results"))
    result = hub.run("cmo_borealis")
    codes = result["stage"]["quarantine_codes"]
    # A batch record feeds four mappings: each one that cannot read it quarantines it, so each
    # dataset counts what it misses and each can be replayed on its own.
    assert codes["PARSE_XML_INVALID"] == 4  # the truncated batch record
    assert codes["PARSE_XML_UNSAFE"] == 4  # entities refused, never expanded
    assert result["stage"]["staged"] == {"quality.qc_result": 5}
    lake = Lake(hub.settings.lake_root)
    unreadable = {"PARSE_XML_INVALID": 1, "PARSE_XML_UNSAFE": 1}
    held = {run.feed for run in list_quarantine(lake) if run.codes == unreadable}
    assert held == {
        "cmo-borealis-batches",
        "cmo-borealis-batch-steps",
        "cmo-borealis-materials",
        "cmo-borealis-deviations",
    }
    # Replaying a mapping other than the first reads both files again for that mapping.
    replayed = replay_quarantine(
        hub.settings, feed="cmo-borealis-deviations", run_id="test__cmo_borealis__1", port=Vault()
    )
    assert (replayed.received, replayed.valid, replayed.quarantined) == (2, 0, 2)
    assert replayed.quarantine_codes == unreadable


def _add_column(text: bytes) -> bytes:
    lines = text.split(b"\r\n")
    return b"\r\n".join(
        [lines[0] + b",Analyst"] + [line + b",ACME-QC-7" if line else line for line in lines[1:]]
    )


def _drop_last_column(text: bytes) -> bytes:
    return b"\r\n".join(line.rsplit(b",", 1)[0] for line in text.split(b"\r\n"))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (_add_column, "MAPPING_UNKNOWN_FIELD"),
        (lambda t: t.replace(b",", b";"), "MAPPING_UNKNOWN_FIELD"),
        (_drop_last_column, "CONTRACT_REQUIRED"),
        (lambda t: t.replace(b"Negative", "Négative".encode("latin-1")), "PARSE_ENCODING"),
    ],
    ids=["extra-column", "other-delimiter", "missing-column", "latin-1"],
)
def test_csv_drift_is_quarantined_by_the_mappings_policy(
    hub: Hub, change: Callable[[bytes], bytes], code: str
) -> None:
    hub.deliver(
        "cmo_acme", "2026-01-20/ACME_LIMS_20260120.csv", change(_csv("cmo-acme-qc-results"))
    )
    result = hub.run("cmo_acme")
    assert result["stage"]["valid"] == 0
    assert code in result["stage"]["quarantine_codes"]


def test_bom_semicolons_and_decimal_commas_are_read_as_the_borealis_mapping_says(
    hub: Hub,
) -> None:
    hub.deliver(
        "cmo_borealis", "2026-01-20/EM_20260120.csv", _csv("cmo-borealis-environmental-monitoring")
    )
    result = hub.run("cmo_borealis")
    assert result["stage"]["staged"] == {"manufacturing.environmental_monitoring": 3}
    import pyarrow.parquet as pq

    part = next(hub.lake.glob("staged/manufacturing.environmental_monitoring/*/*/*/*.parquet"))
    values = sorted(pq.read_table(part).column("value").to_pylist())
    assert values == [0.5, 2203.0, 417260.0]


def test_a_file_over_the_size_limit_is_refused_without_being_read(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_cmo_feed("cmo_acme")
    small = dataclasses.replace(
        config, options=config.options.model_copy(update={"max_bytes": 512})
    )
    monkeypatch.setattr(pipeline, "load_cmo_feed", lambda name: small)
    hub.deliver("cmo_acme", "2026-01-20/ACME_LIMS_20260120.csv", _csv("cmo-acme-qc-results") * 4)
    result = hub.run("cmo_acme")
    assert result["fetch"]["refused"] == 1
    assert result["verify"]["rejected"] == {"FILE_TOO_LARGE": 1}
    again = hub.run("cmo_acme")
    assert again["fetch"]["refused"] == 0  # remembered, not listed again each run


def test_a_file_no_mapping_routes_is_rejected(hub: Hub) -> None:
    hub.deliver("cmo_acme", "2026-01-20/ACME_INVOICES_20260120.csv", b"Invoice,Amount\n1,2\n")
    result = hub.run("cmo_acme")
    assert result["verify"]["rejected"] == {"FILE_UNROUTED": 1}


def test_a_backfill_window_takes_only_files_delivered_in_it(hub: Hub) -> None:
    hub.deliver("cmo_acme", "2026-01-20/ACME_LIMS_20260120.csv", _csv("cmo-acme-qc-results"))
    hub.deliver(
        "cmo_acme", "2026-01-22/ACME_EM_20260122.csv", _csv("cmo-acme-environmental-monitoring")
    )
    window = hub.run(
        "cmo_acme",
        since=datetime(2026, 1, 20, tzinfo=UTC),
        until=datetime(2026, 1, 21, tzinfo=UTC),
    )
    assert window["stage"]["staged"] == {"quality.qc_result": 4}
    scheduled = hub.run("cmo_acme")  # a scheduled run takes what is left
    assert list(scheduled["stage"]["staged"]) == ["manufacturing.environmental_monitoring"]


def test_a_problem_with_our_own_key_fails_the_run_and_rejects_no_file(hub: Hub) -> None:
    hub.deliver("cmo_acme", "2026-01-20/ACME_LIMS_20260120.csv", _csv("cmo-acme-qc-results"))
    hub.settings = load_settings(home=hub.home, openpgp_passphrase="not the passphrase")
    with pytest.raises(pgp.OpenPgpError) as caught:
        hub.run("cmo_acme")
    assert caught.value.code == "CRYPTO_PASSPHRASE"
    registry = pipeline.registry_for(
        RunContext.for_interval("cmo_acme", datetime(2026, 1, 1, tzinfo=UTC), settings=hub.settings)
    )
    assert registry.deliveries("cmo_acme", datetime(2000, 1, 1, tzinfo=UTC),
                               datetime(2100, 1, 1, tzinfo=UTC)) == []  # fmt: skip
