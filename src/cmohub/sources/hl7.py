"""HL7 v2 inputs: files in an inbox folder, and messages the MLLP listener spooled.

* **Inbox files** (:func:`iter_inbox`): every file under the inbox matching a pattern
  (default ``**/*.hl7``), in path order — single messages or FHS/BHS batch files alike.
* **MLLP spool** (:class:`MllpSpool`): the listener (:mod:`cmohub.sources.mllp`) stores each
  accepted message encrypted in the raw clinical store, then writes a spool entry
  (``state/clinical-hl7-mllp/msg-<time>-<sha>.json``: hash, size, time — nothing from the
  message) and only then acknowledges. The sync task reads the spool like an inbox.

Either way an input is registered once by SHA-256 (the file registry): the same bytes again
are a duplicate delivery, not new messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cmohub.errors import ConfigError
from cmohub.lake import Lake
from cmohub.sources.raw_clinical import RawClinicalStore

SPOOL_FEED = "clinical-hl7-mllp"


@dataclass(frozen=True)
class Hl7Input:
    """One payload to read: where it came from, and its bytes."""

    source: str  # inbox-relative path, or mllp:<sha256 prefix>
    kind: str  # file or mllp
    data: bytes
    received_at: datetime | None = None


def iter_inbox(root: Path, pattern: str = "**/*.hl7") -> Iterator[Hl7Input]:
    """The files of an inbox folder, in path order (a missing inbox holds nothing)."""
    folder = Path(root)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError("the HL7 inbox is not a folder", where=str(folder))
    for path in sorted(p for p in folder.glob(pattern) if p.is_file()):
        yield Hl7Input(path.relative_to(folder).as_posix(), "file", path.read_bytes())


class MllpSpool:
    """Messages received over MLLP, kept encrypted; the spool lists them by hash."""

    def __init__(
        self,
        lake: Lake,
        raw: RawClinicalStore,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not raw.keeps:
            raise ConfigError(
                "the MLLP listener needs CMOHUB_RAW_CLINICAL=encrypted: it acknowledges a "
                "message only once it is stored, and clinical payloads are stored encrypted",
                code="CONFIG_INVALID",
            )
        self.lake = lake
        self.raw = raw
        self.clock = clock

    def store(self, data: bytes) -> str:
        """Keep one message durably (encrypted payload, then spool entry); return its hash."""
        sha256, _ = self.raw.put(data)
        now = self.clock().astimezone(UTC)
        name = f"msg-{now:%Y%m%dT%H%M%S%f}-{sha256[:16]}"
        self.lake.write_json(
            self.lake.state_path(SPOOL_FEED, name),
            {"sha256": sha256, "size": len(data), "received_at": now.isoformat()},
        )
        return sha256

    def entries(self) -> list[dict[str, str]]:
        """Spool entries, oldest first."""
        out = []
        for path in self.lake.iter_files(f"state/{SPOOL_FEED}", "msg-*.json"):
            out.append(dict(self.lake.read_json(path)))
        return out

    def inputs(self) -> Iterator[Hl7Input]:
        for entry in self.entries():
            sha256 = str(entry["sha256"])
            received = datetime.fromisoformat(str(entry["received_at"]))
            yield Hl7Input(f"mllp:{sha256[:16]}", "mllp", self.raw.get(sha256), received)
