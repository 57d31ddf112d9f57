"""What the vault's operations return (no identifier values except in RevealedIdentity)."""

from __future__ import annotations

from dataclasses import dataclass

from cmohub.identifiers import Coi
from cmohub.identity import SubjectIdentity
from cmohub.vault.audit import Checkpoint
from cmohub.vault.keys import KeyPurpose


@dataclass(frozen=True, slots=True)
class LinkageMismatch:
    """A known identifier arrived with demographics that differ from those seen before."""

    position: int  # index in the request batch
    coi: Coi
    fields: tuple[str, ...]  # which demographic fields differ (names only)


@dataclass(frozen=True, slots=True)
class TokenizeResult:
    """The detailed answer to a tokenize batch; ``cois`` is what ``tokenize_many`` returns."""

    cois: list[Coi]
    new: list[bool]  # True where this call allocated the COI
    linkage_mismatches: list[LinkageMismatch]

    @property
    def new_count(self) -> int:
        return len({c for c, n in zip(self.cois, self.new, strict=True) if n})


@dataclass(frozen=True, slots=True)
class EnrollmentAssignment:
    """A COI issued by the sponsor's enrollment system for one subject and therapy event."""

    identity: SubjectIdentity
    therapy_event: str
    coi: Coi | str


@dataclass(frozen=True, slots=True)
class EnrollResult:
    enrolled: int  # newly adopted
    already: int  # the same assignment was already in the vault


@dataclass(frozen=True, slots=True)
class MergeResult:
    moved: list[Coi]  # COIs of the retired identifier, now the survivor's
    already_merged: bool = False


@dataclass(frozen=True, slots=True)
class RevealedIdentity:
    """The result of a granted re-identification. Print it to a terminal, nowhere else."""

    coi: Coi
    identity: SubjectIdentity
    therapy_event: str
    origin: str
    created_at: str
    created_by: str


@dataclass(frozen=True, slots=True)
class WithdrawResult:
    coi: Coi
    already_withdrawn: bool


@dataclass(frozen=True, slots=True)
class RotationResult:
    purpose: KeyPurpose
    from_version: int
    to_version: int
    rows: int  # COI rows re-indexed, or data keys re-wrapped
    aliases: int = 0


@dataclass(frozen=True, slots=True)
class InitResult:
    created: bool  # False: the vault was already initialized (nothing changed)
    schema_before: str | None
    schema: str
    keys_created: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VaultStatus:
    database: str
    vault_id: str
    schema: str
    index_version: int
    kek_version: int
    audit_version: int
    provider_versions: dict[str, list[int]]
    cois_active: int
    cois_withdrawn: int
    cois_enrolled: int
    rows_by_index_version: dict[int, int]
    data_keys_by_kek_version: dict[int, int]
    aliases: int
    audit_events: int
    last_checkpoint: Checkpoint | None
    # The newest backup and restore the audit log records: (UTC time, file name).
    last_backup: tuple[str, str] | None = None
    last_restore: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit event as read back (for reports)."""

    seq: int
    at: str
    event: str
    actor: str
    role: str
    feed: str | None
    purpose: str | None
    ticket: str | None
    coi: str | None
    outcome: str
    details: str


@dataclass(frozen=True, slots=True)
class CopyCheck:
    """What opening a copy of the vault (a backup, or one being restored) with the vault's
    keys found: all of it verified."""

    vault_id: str
    audit_events: int  # the audit log verifies, every event
    cois_active: int
    cois_withdrawn: int
    data_keys: int  # each unwrapped with the KEK version it names
    key_versions: dict[str, int]  # the active version of each key the copy needs

    @classmethod
    def of(cls, status: VaultStatus, data_keys: int) -> CopyCheck:
        return cls(
            vault_id=status.vault_id,
            audit_events=status.audit_events,
            cois_active=status.cois_active,
            cois_withdrawn=status.cois_withdrawn,
            data_keys=data_keys,
            key_versions={
                "index": status.index_version,
                "kek": status.kek_version,
                "audit": status.audit_version,
            },
        )


@dataclass(frozen=True, slots=True)
class BackupResult:
    """A backup written by :meth:`cmohub.vault.Vault.backup`, and what its check found."""

    path: str
    size: int  # bytes
    sha256: str
    checkpoint: Checkpoint  # made for it: the backup holds every event it covers
    checked: CopyCheck


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """A vault restored from a backup by :meth:`cmohub.vault.Vault.restore`."""

    path: str  # the vault file now holding the backup's content
    backup: str
    backup_sha256: str  # of the backup file (unchanged by the restore)
    checkpoint: Checkpoint  # signed after the restore event, covering it
    checked: CopyCheck  # the backup as found (the restore event comes after its events)
    replaced: str | None  # where the vault that was there was moved (kept), if one was
    # COIs the replaced vault held that the backup lacks, with their status: their subjects'
    # link is gone. None when no vault was replaced or it could not be read.
    lost_cois: tuple[tuple[str, str], ...] | None
    replaced_unreadable: str  # why the replaced vault could not be read ("" if it could)
    # The replaced vault's audit events after the backup's, by type (kept in the replaced
    # file only); None if none was replaced, it could not be read, or its log does not
    # continue the backup's (``replaced_diverges``).
    replaced_events_after: dict[str, int] | None
    witness_lacks: int | None  # events the newest witness checkpoint signs beyond the backup

    @property
    def replaced_diverges(self) -> bool:
        """The replaced vault was read, and its audit log does not continue the backup's."""
        return self.lost_cois is not None and self.replaced_events_after is None
