"""The keyed mapping vault: the one place where patient identifiers and COIs meet.

Pipelines use it through :class:`cmohub.identity.IdentityPort` (``tokenize_many``,
``verify_many``) and never re-identify; privacy officers use the ``cmohub vault`` command.

Operations (:class:`Vault`)
---------------------------

=============================== ==============================================================
``tokenize`` / ``tokenize_many`` COI of (identity, therapy event); a new random COI on first
                                sight. ``tokenize_many_detailed`` also says which are new and
                                reports demographic linkage mismatches.
``lookup`` / ``lookup_many``    COI or None; never allocates
``verify`` / ``verify_many``    known / unknown / withdrawn (CMO and courier feeds carry COIs)
``enroll_many``                 adopt COIs issued by the sponsor's enrollment system
``merge``                       retired identifier resolves to the survivor (ADT^A40)
``reveal`` / ``reveal_many``    COI -> identifier; privacy officers only, purpose and ticket
``withdraw``                    consent withdrawn: identifier and blind indexes destroyed, the
                                COI kept (it stays ``withdrawn`` for traceability)
``rotate_index_key``            re-index every row under a new HMAC key version
``rotate_kek``                  re-wrap every data key under a new KEK version
``rotate_audit_key``            sign future checkpoints with a new audit key version
``checkpoint``                  verify the audit log, then sign its Merkle root and size
``latest_checkpoint``           the newest signed checkpoint (publish embeds it)
``verify_audit``                check the log against its checkpoints (and witnesses)
``audit_records``               audit events of a period (recorded as an ``export``)
``backup``                      a consistent, checked copy of an SQLite vault (``export``)
``Vault.restore``               an SQLite vault back from a backup, checked with the keys
                                first; the vault replaced is kept and the COIs it held that
                                the backup lacks are named (a ``restore`` event)
``status``                      key versions, counts, last checkpoint
=============================== ==============================================================

Every operation is one database transaction and appends its audit event(s) in it. What is
stored, and how, is described in :mod:`cmohub.vault.schema`; identifier normalization in
:mod:`cmohub.vault.normalize`; keys in :mod:`cmohub.vault.keys`; roles in
:mod:`cmohub.vault.roles`; the audit log in :mod:`cmohub.vault.audit`.

Error codes
-----------

No message contains an identifier value (COIs and system URIs are not identifiers of people
and do appear).

=============================== ============================ ===============================
code                            class                        when
=============================== ============================ ===============================
VAULT_STORE_UNAVAILABLE         StoreUnavailable (Transient) database down, locked, dropped
VAULT_RESTORING                 StoreUnavailable (Transient) a restore held the SQLite file
                                                             for 30 s (new connections wait)
VAULT_NOT_INITIALIZED           VaultError                   no vault schema: run init
VAULT_SCHEMA_OUTDATED           VaultError                   older schema: run init
VAULT_STORE_CONFLICT            VaultError                   unexpected constraint failure
VAULT_STORE_ERROR               VaultError                   other database failure
VAULT_URL_UNSUPPORTED           ConfigError                  not SQLite / PostgreSQL
VAULT_FIN_INVALID               ConfigError                  configured FIN malformed
VAULT_CLOCK_INVALID             ConfigError                  clock returned a naive time
VAULT_KEY_MISSING               ConfigError                  key file / variable absent
VAULT_KEY_PERMISSIONS           ConfigError                  key file group/world readable
VAULT_KEY_INVALID               ConfigError                  key malformed or wrong header
VAULT_KEY_READONLY              ConfigError                  provider cannot create keys
VAULT_ROLES_INVALID             ConfigError                  roles file malformed
VAULT_ROLES_PERMISSIONS         ConfigError                  roles file group/world writable
VAULT_SYSTEMS_INVALID           ConfigError                  identifier-systems file malformed
VAULT_MIGRATION_INVALID         ConfigError                  migrations run outside the vault
VAULT_SYSTEM_INVALID            VaultError                   identifier system malformed
VAULT_UNKNOWN_SYSTEM            VaultError                   system not accepted here
VAULT_IDENTIFIER_INVALID        VaultError                   value empty, control chars, long
VAULT_EVENT_INVALID             VaultError                   therapy event malformed
ID_*                            IdentifierError              a COI is malformed (check char.)
VAULT_COI_UNKNOWN               VaultError                   COI not in this vault
VAULT_COI_WITHDRAWN             VaultError                   reveal of a withdrawn COI
VAULT_ENROLL_CONFLICT           VaultError                   enrollment disagrees with vault
VAULT_MERGE_CONFLICT            VaultError                   merge needs a person to resolve
VAULT_MERGE_INVALID             VaultError                   survivor == retired
VAULT_ALLOCATION_EXHAUSTED      VaultError                   no free COI after 8 draws
VAULT_ACCESS_DENIED             AccessDenied                 not a privacy officer
VAULT_PURPOSE_REQUIRED          AccessDenied                 reveal without purpose or ticket
VAULT_REASON_REQUIRED           VaultError                   withdrawal without a reason
VAULT_DECRYPT_FAILED            CryptoError                  ciphertext or data key failed
                                                             authentication (audited; nothing
                                                             partial is returned)
VAULT_AUDIT_TAMPERED            VaultError                   checkpoint refused: log altered
VAULT_CHECKPOINT_INVALID        CryptoError                  not a checkpoint object
VAULT_ENROLLMENT_INVALID        VaultError                   enrollments.ndjson line unusable
VAULT_REVEAL_NOT_A_TERMINAL     VaultError                   CLI reveal into a file or pipe
VAULT_REPORT_INVALID            VaultError                   CLI report dates malformed
VAULT_BACKUP_EXISTS             VaultError                   backup file name taken
VAULT_BACKUP_FAILED             VaultError                   backup not written or its check
                                                             failed (nothing left behind)
VAULT_BACKUP_UNSUPPORTED        ConfigError                  PostgreSQL: use its own tools
VAULT_RESTORE_EXISTS            VaultError                   a vault is there (no replace)
VAULT_RESTORE_IN_USE            VaultError                   the vault to replace is open in
                                                             another process: stop the DAGs
VAULT_RESTORE_MISMATCH          VaultError                   backup (or witness) of another
                                                             vault than the one there
VAULT_RESTORE_FAILED            VaultError                   backup unreadable, not a vault,
                                                             its log does not verify, or the
                                                             copy failed (nothing changed)
VAULT_RESTORE_UNSUPPORTED       ConfigError                  PostgreSQL: use its own tools
=============================== ============================ ===============================

Semantics worth knowing
-----------------------

* A COI belongs to one subject *and* one therapy event; ``withdraw`` ends one therapy event
  (its COI stays, ``withdrawn``). A subject with several therapy events has several COIs to
  withdraw. After a withdrawal the vault no longer recognizes the identifier for that event: a
  later arrival gets a new COI.
* ``reveal`` returns the identifier a COI was issued for; after a merge that may be the retired
  identifier (both name the same person).
* ``verify_many`` raises IdentifierError (``where=cois[i]``) for a malformed COI; callers
  validate COIs first (the canonical records do).
"""

from __future__ import annotations

import os

from cmohub.settings import KeyProviderKind, Settings
from cmohub.vault.audit import (
    AuditStatus,
    AuditVerification,
    Checkpoint,
    verify_checkpoint,
)
from cmohub.vault.core import DEFAULT_FIN, Vault
from cmohub.vault.keys import (
    EnvKeyProvider,
    FileKeyProvider,
    KeyProvider,
    KeyPurpose,
    MappingKeyProvider,
    MemoryKeyProvider,
)
from cmohub.vault.normalize import SystemRegistry, load_systems
from cmohub.vault.results import (
    AuditRecord,
    EnrollmentAssignment,
    EnrollResult,
    InitResult,
    LinkageMismatch,
    MergeResult,
    RevealedIdentity,
    RotationResult,
    TokenizeResult,
    VaultStatus,
    WithdrawResult,
)
from cmohub.vault.roles import Roles, load_roles

SYSTEMS_FILE = "identifier-systems.yaml"


def key_provider_for(settings: Settings) -> KeyProvider:
    """The key provider the settings name: key files in HOME/keys, or the environment."""
    if settings.key_provider is KeyProviderKind.ENV:
        return EnvKeyProvider(os.environ)
    return FileKeyProvider(settings.keys_dir)


def open_vault(settings: Settings, *, initialize: bool = False) -> Vault:
    """The vault the settings describe (``CMOHUB_VAULT_URL`` or HOME/vault.sqlite).

    Roles come from HOME/roles.yaml, accepted identifier systems from
    HOME/identifier-systems.yaml, the COI facility from ``CMOHUB_VAULT_FIN``. Raises
    VAULT_NOT_INITIALIZED unless ``cmohub vault init`` ran; ``initialize=True`` skips that
    check so that :meth:`Vault.init` can create the schema.
    """
    vault = Vault(
        settings.vault_database_url,
        key_provider_for(settings),
        roles=load_roles(settings.roles_file),
        systems=load_systems(settings.home_dir / SYSTEMS_FILE),
        fin=settings.vault_fin,
    )
    if not initialize:
        vault.check_schema()
    return vault


__all__ = [
    "DEFAULT_FIN",
    "SYSTEMS_FILE",
    "AuditRecord",
    "AuditStatus",
    "AuditVerification",
    "Checkpoint",
    "EnrollResult",
    "EnrollmentAssignment",
    "EnvKeyProvider",
    "FileKeyProvider",
    "InitResult",
    "KeyProvider",
    "KeyPurpose",
    "LinkageMismatch",
    "MappingKeyProvider",
    "MemoryKeyProvider",
    "MergeResult",
    "RevealedIdentity",
    "Roles",
    "RotationResult",
    "SystemRegistry",
    "TokenizeResult",
    "Vault",
    "VaultStatus",
    "WithdrawResult",
    "key_provider_for",
    "open_vault",
    "verify_checkpoint",
]
