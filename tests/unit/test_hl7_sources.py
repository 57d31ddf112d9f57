"""HL7 inputs and the stores behind them: inbox files in order, the MLLP spool read back,
files registered once in one transaction, raw payloads kept only encrypted (or not at all),
and message keys claimed once across runs (but again by a retry of the same run)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cmohub.crypto.envelope import envelope_kek_version
from cmohub.errors import ConfigError, CryptoError
from cmohub.lake import Lake
from cmohub.settings import RawClinicalPolicy
from cmohub.sources.hl7 import MllpSpool, iter_inbox
from cmohub.sources.raw_clinical import (
    BatchManifest,
    RawClinicalStore,
    load_batch_manifest,
    split_input_locator,
)
from cmohub.sources.registry import FileRegistry
from cmohub.sources.seen import SeenRegistry
from cmohub.vault.keys import KeyPurpose, MemoryKeyProvider

NOW = datetime(2026, 3, 1, tzinfo=UTC)
SECRET = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5.1\rPID|1||SBX-MRN-CNRYSOURCES01\r"


def test_inbox_files_are_read_in_path_order(tmp_path: Path) -> None:
    for name in ("b/2.hl7", "a/1.hl7", "a/skip.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    assert [i.source for i in iter_inbox(tmp_path)] == ["a/1.hl7", "b/2.hl7"]
    assert list(iter_inbox(tmp_path / "missing")) == []


def test_raw_payloads_are_encrypted_and_read_back(tmp_path: Path) -> None:
    keys = MemoryKeyProvider.generated()
    lake = Lake(tmp_path / "lake")
    raw = RawClinicalStore(lake, keys, policy=RawClinicalPolicy.ENCRYPTED)
    digests = raw.put_many([SECRET, SECRET + b"X", SECRET])
    assert digests[0] == digests[2] != digests[1]
    stored = list((tmp_path / "lake" / "raw" / "clinical").rglob("*.enc"))
    assert len(stored) == 2
    assert all(b"CNRY" not in p.read_bytes() for p in stored)
    assert raw.get(digests[1]) == SECRET + b"X"
    # A new KEK version encrypts new payloads; old ones still open.
    keys.create(KeyPurpose.KEK)
    newer, _ = raw.put(b"later payload")
    assert raw.get(digests[0]) == SECRET and raw.get(newer) == b"later payload"
    path = next(p for p in stored if p.name.startswith(digests[0]))
    assert envelope_kek_version(path.read_bytes()) == 1
    keys.forget(KeyPurpose.KEK, 1)
    with pytest.raises(ConfigError) as missing:
        RawClinicalStore(lake, keys, policy=RawClinicalPolicy.ENCRYPTED).get(digests[0])
    assert missing.value.code == "VAULT_KEY_MISSING"
    sealed = path.read_bytes()
    path.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))  # altered ciphertext
    with pytest.raises(CryptoError):
        raw.get(digests[0])


def test_with_raw_none_nothing_is_kept(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    raw = RawClinicalStore(lake, MemoryKeyProvider.generated(), policy=RawClinicalPolicy.NONE)
    (digest,) = raw.put_many([SECRET])
    assert not (tmp_path / "lake").exists()
    with pytest.raises(ConfigError) as raised:
        raw.get(digest)
    assert raised.value.code == "RAW_NOT_KEPT"


def test_the_spool_lists_what_the_listener_stored(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    raw = RawClinicalStore(lake, MemoryKeyProvider.generated(), policy=RawClinicalPolicy.ENCRYPTED)
    spool = MllpSpool(lake, raw, clock=lambda: NOW)
    sha = spool.store(SECRET)
    (item,) = spool.inputs()
    assert item.data == SECRET and item.kind == "mllp" and item.source == f"mllp:{sha[:16]}"
    entries = list((tmp_path / "lake" / "state" / "clinical-hl7-mllp").glob("*.json"))
    assert entries and b"CNRY" not in entries[0].read_bytes()


def test_batch_manifests_name_their_payloads(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    manifest = BatchManifest("clinical-hl7", "run-1")
    assert manifest.add("a" * 64, source="x.hl7", kind="hl7-file") == 1
    assert manifest.add("b" * 64, source="y.hl7", kind="hl7-file") == 2
    sha = manifest.save(lake)
    assert load_batch_manifest(lake, sha)["inputs"][1]["sha256"] == "b" * 64
    assert split_input_locator("input=2/message=3/ORC=1") == (2, "message=3/ORC=1")
    with pytest.raises(ConfigError):
        split_input_locator("row=3")


def test_files_are_registered_once_in_one_transaction(tmp_path: Path) -> None:
    registry = FileRegistry.from_url(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    first = registry.register_many(
        [("a" * 64, 3, "1.hl7"), ("b" * 64, 4, "2.hl7"), ("a" * 64, 3, "1-again.hl7")],
        feed="clinical-hl7",
        received_at=NOW,
        run_id="run-1",
    )
    assert [r.new for r in first] == [True, True, False]
    assert first[2].first_name == "1.hl7"
    later = registry.register_many(
        [("a" * 64, 3, "x.hl7"), ("c" * 64, 1, "3.hl7")],
        feed="clinical-hl7",
        received_at=NOW,
        run_id="run-2",
    )
    assert [r.new for r in later] == [False, True]
    assert later[0].first_run_id == "run-1"
    assert registry.sightings("a" * 64) == 3
    single = registry.register("c" * 64, size=1, feed="f", name="n", received_at=NOW, run_id="r")
    assert not single.new


def test_seen_keys_are_claimed_once_but_a_retry_keeps_its_own(tmp_path: Path) -> None:
    seen = SeenRegistry.from_url(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    assert seen.claim("feed", ["k1", "k2", "k1"], run_id="run-1") == [True, True, False]
    assert seen.claim("feed", ["k1", "k3"], run_id="run-1") == [True, True]  # a retry
    assert seen.claim("feed", ["k1", "k3", "k4"], run_id="run-2") == [False, False, True]
    assert seen.claim("other", ["k1"], run_id="run-2") == [True]
    database = (tmp_path / "hub.sqlite").read_bytes()
    assert b"k1" not in database  # keys are stored as digests
    seen.dispose()
