"""MLLP listener: a message is acknowledged AA only once it is stored (encrypted, spooled); a
bad one is answered AR with an ERR that names the code and the place, never a value."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmohub.errors import ConfigError, StoreUnavailable
from cmohub.formats.hl7v2 import read_ack
from cmohub.lake import Lake
from cmohub.settings import RawClinicalPolicy
from cmohub.sources.hl7 import MllpSpool
from cmohub.sources.mllp import MllpListener, check_message, send
from cmohub.sources.raw_clinical import RawClinicalStore
from cmohub.vault.keys import MemoryKeyProvider

CANARY = "SBX-MRN-CNRYMLLPTEST01"
GOOD = (
    "MSH|^~\\&|SBX-EHR|A9992|CMOHUB|A9999|20260110123600+0000||OML^O21^OML_O21|M1|P|2.5.1\r"
    f"PID|1||{CANARY}^^^SBXA9992&urn:cmohub:sandbox:mrn:A9992&URI^MR||Fam^Giv||19010102\r"
    "ORC|NW|PO-1||TE-1\rOBR|1|PO-1||SBX-CART-01\r"
).encode()


@pytest.fixture
def spool(tmp_path: Path) -> MllpSpool:
    lake = Lake(tmp_path / "lake")
    raw = RawClinicalStore(lake, MemoryKeyProvider.generated(), policy=RawClinicalPolicy.ENCRYPTED)
    return MllpSpool(lake, raw)


def test_a_good_message_is_stored_encrypted_then_acknowledged(
    spool: MllpSpool, tmp_path: Path
) -> None:
    with MllpListener(spool.store).running() as listener:
        host, port = listener.address
        (ack,) = send(host, port, [GOOD])
    assert read_ack(ack)[:2] == ("AA", "M1")
    (entry,) = spool.entries()
    assert spool.raw.get(entry["sha256"]) == GOOD
    for path in (tmp_path / "lake").rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


def test_the_same_message_twice_is_stored_once_and_acknowledged_twice(spool: MllpSpool) -> None:
    with MllpListener(spool.store).running() as listener:
        answers = send(*listener.address, [GOOD, GOOD])
    assert [read_ack(a)[0] for a in answers] == ["AA", "AA"]
    assert len({e["sha256"] for e in spool.entries()}) == 1


@pytest.mark.parametrize(
    ("message", "code", "where"),
    [
        (GOOD.replace(b"^~\\&", b"^~}"), "PARSE_HL7_ENCODING", "MSH^1^2"),
        (GOOD.replace(b"ORC|NW", b"ORC|\x00\x00NW"), "PARSE_HL7_NUL", "ORC^1"),
        (GOOD.replace(b"OML^O21^OML_O21", b"ORU^R01^ORU_R01"), "PARSE_HL7_UNSUPPORTED", "MSH^1^9"),
        (GOOD.split(b"ORC")[0], "PARSE_HL7_STRUCTURE", "ORC^1"),
    ],
)
def test_a_bad_message_is_rejected_with_what_was_wrong(
    spool: MllpSpool, message: bytes, code: str, where: str
) -> None:
    with MllpListener(spool.store).running() as listener:
        (ack,) = send(*listener.address, [message])
        assert listener.stats.rejected == {code: 1}
    answer, control, ours = read_ack(ack)
    assert (answer, control, ours) == ("AR", "M1", code)
    text = ack.decode()
    assert f"|{where}|" in text or f"|{where}^" in text
    assert CANARY not in text and "19010102" not in text
    assert spool.entries() == []


def test_nothing_is_acknowledged_when_storing_fails(spool: MllpSpool) -> None:
    def broken(data: bytes) -> str:
        raise StoreUnavailable("disk full")

    with MllpListener(broken).running() as listener:
        (ack,) = send(*listener.address, [GOOD])
        assert listener.stats.store_failures == 1 and listener.stats.accepted == 0
    code, _, ours = read_ack(ack)
    assert code == "AR" and ours == "STORE_UNAVAILABLE"
    assert "^207^" in ack.decode() or "207^" in ack.decode()


def test_frames_split_across_packets_and_line_endings(spool: MllpSpool) -> None:
    listener = MllpListener(spool.store)
    # what a sender on Windows might produce: CR LF segment ends
    assert check_message(GOOD.replace(b"\r", b"\r\n"))[1] is None
    assert read_ack(listener.answer(GOOD))[0] == "AA"


def test_the_listener_needs_the_encrypted_raw_store(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    raw = RawClinicalStore(lake, MemoryKeyProvider.generated(), policy=RawClinicalPolicy.NONE)
    with pytest.raises(ConfigError):
        MllpSpool(lake, raw)
