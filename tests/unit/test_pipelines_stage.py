from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from cmohub.identifiers import Coi
from cmohub.identity import Actor, CoiStatus, TokenizeRequest
from cmohub.lake import sha256_hex
from cmohub.mapping.readers import read_records
from cmohub.mapping.spec import compile_mapping
from cmohub.mapping.store import load_mapping
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.ledger import RunLedger
from cmohub.pipelines.stage import FeedStager
from cmohub.settings import load_settings

KNOWN = str(Coi(fin="A9999", year="26", sequence="AAAA01"))
UNKNOWN = str(Coi(fin="A9999", year="26", sequence="ZZZZ99"))
CORRUPT = KNOWN[:-1] + ("0" if KNOWN[-1] != "0" else "1")
DIN = "A999126000001"


class FakeVault:
    def tokenize_many(self, requests: Sequence[TokenizeRequest], *, actor: Actor) -> list[Coi]:
        raise AssertionError("a CMO feed never tokenizes")

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        assert actor.role == "service"
        return [CoiStatus.KNOWN if c == KNOWN else CoiStatus.UNKNOWN for c in cois]


def acme_batches() -> bytes:
    from cmohub.identifiers import mod37_2

    din = DIN + mod37_2(DIN)
    header = (
        "Lot Number,Chain of Identity,Donation ID,Product Code,Start Time,End Time,Batch Status"
    )
    times = "2026-01-20T08:00:00-05:00,2026-01-29T17:00:00-05:00"
    good = f"ACM-26-00001,{KNOWN},{din},SBX-CART-01,{times},Complete"
    rows = [
        header,
        good,
        good,  # the same row twice: a duplicate, counted, not staged
        f"ACM-26-00002,{CORRUPT},{din},SBX-CART-01,2026-01-20T08:00:00-05:00,,Aborted",
        f"ACM-26-00003,{UNKNOWN},{din},SBX-CART-01,2026-01-20T08:00:00-05:00,,Aborted",
    ]
    return ("\n".join(rows) + "\n").encode()


def test_a_payload_is_staged_quarantined_and_counted(tmp_path: Path) -> None:
    context = RunContext.for_interval(
        "cmo_acme",
        datetime(2026, 1, 30, tzinfo=UTC),
        run_id="manual__2026-01-30T00:00:00+00:00",
        settings=load_settings(home=tmp_path),
    )
    compiled = compile_mapping(load_mapping("cmo-acme-batches"))
    payload = acme_batches()
    ledger = RunLedger(task="ingest")
    stager = FeedStager(context, compiled, port=FakeVault(), ledger=ledger)
    stager.stage(sha256_hex(payload), read_records(compiled.spec.source, payload))
    result = stager.finish()
    ledger.save(context)

    assert (
        result.counts.received,
        result.counts.valid,
        result.counts.quarantined,
        result.counts.duplicates,
    ) == (4, 1, 2, 1)
    lake_root = tmp_path / "lake"
    staged = pq.read_table(lake_root / result.parts[0]).to_pylist()
    assert [(r["batch_id"], r["coi"], r["_feed"]) for r in staged] == [
        ("ACM-26-00001", KNOWN, "cmo-acme-batches")
    ]
    assert result.parts[0].startswith(
        "staged/manufacturing.batch/feed=cmo-acme-batches/date=2026-01-30/"
    )
    assert result.quarantine is not None
    quarantined = [
        json.loads(line) for line in (lake_root / result.quarantine).read_text().splitlines()
    ]
    assert sorted(q["code"] for q in quarantined) == ["COI_CHECK_INVALID", "COI_UNKNOWN"]
    assert all(
        q["source_sha256"] == sha256_hex(payload) and q["source_locator"] for q in quarantined
    )
    text = (lake_root / result.quarantine).read_text()
    assert CORRUPT not in text and UNKNOWN not in text  # classified values never in quarantine
    assert ledger.quarantine_codes == {"COI_CHECK_INVALID": 1, "COI_UNKNOWN": 1}
    assert ledger.mappings["cmo-acme-batches"] == compiled.spec.content_sha256
