"""Runtime settings, read from ``CMOHUB_*`` environment variables.

Only the imperative shell (CLI, pipelines, sources, vault, publish) reads settings; the
functional core receives values as parameters. Secrets are :class:`pydantic.SecretStr` so that
they never show in ``repr`` or logs.

======================== ====================================================================
CMOHUB_HOME              working directory of the embedded default (default ``./.cmohub``):
                         vault database, key files, roles file, lake, Airflow home
CMOHUB_LAKE_URL          lake root: a local path or an object-store URL (default HOME/lake)
CMOHUB_VAULT_URL         SQLAlchemy URL of the vault (default: SQLite file HOME/vault.sqlite)
CMOHUB_VAULT_FIN         facility (FIN) of the COIs the vault allocates (default A9999, the hub)
CMOHUB_HUB_DB_URL        SQLAlchemy URL of operational metadata: the file registry (default:
                         SQLite file HOME/hub.sqlite); never holds patient identifiers
CMOHUB_KEY_PROVIDER      ``file`` (embedded default, HOME/keys) or ``env`` (production)
CMOHUB_LOG_LEVEL         logging level (default INFO)
CMOHUB_LOG_JSON          ``true`` for one JSON object per log line
CMOHUB_MASTER_DIR        master-data files (sites, reagent lots, operator certifications);
                         default: the sandbox program's ``master/`` folder
CMOHUB_RAW_CLINICAL      ``encrypted`` (keep raw clinical payloads encrypted, default) or ``none``
CMOHUB_SANDBOX_DIR       the sandbox program the embedded default reads (default HOME/sandbox)
CMOHUB_ENROLLMENTS       the sponsor's enrollment register, NDJSON (default: the sandbox's
                         sponsor/enrollments.ndjson)
CMOHUB_HL7_INBOX         folder of HL7 v2 files (default: the sandbox's clinical/hl7)
CMOHUB_ODCS_SCHEMAS      folder of ODCS JSON schemas ``odcs-json-schema-<apiVersion>.json``:
                         a contract is checked against the schema of the version it declares
                         when it is there, else against the v3.2.0 schema that
                         open-data-contract-standard ships (it admits v3.0.0 to v3.2.0)
======================== ====================================================================

``CMOHUB_OPENPGP_PASSPHRASE`` (or ``CMOHUB_OPENPGP_PASSPHRASE_FILE``, a file holding it) unlocks
the hub's OpenPGP secret key (CMO exchange, publishing); the embedded default keeps it in
HOME/keys/openpgp/sponsor.passphrase (mode 0600).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KeyProviderKind(StrEnum):
    FILE = "file"
    ENV = "env"


class RawClinicalPolicy(StrEnum):
    ENCRYPTED = "encrypted"
    NONE = "none"


class Settings(BaseSettings):
    """The hub's configuration. Construct with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="CMOHUB_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    home: Path = Field(default=Path(".cmohub"))
    lake_url: str | None = None
    vault_url: SecretStr | None = None
    vault_fin: str = Field(default="A9999", pattern=r"^[A-NP-Z][0-9]{4}$")
    hub_db_url: SecretStr | None = None
    key_provider: KeyProviderKind = KeyProviderKind.FILE
    log_level: str = "INFO"
    log_json: bool = False
    raw_clinical: RawClinicalPolicy = RawClinicalPolicy.ENCRYPTED
    openpgp_passphrase: SecretStr | None = None
    openpgp_passphrase_file: Path | None = None
    sandbox_dir: Path | None = None
    enrollments: str | None = None
    hl7_inbox: Path | None = None
    master_dir: Path | None = None
    odcs_schemas: Path | None = None
    vault_backup_dir: Path | None = None
    vault_backup_keep: int = Field(default=14, ge=0)

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().absolute()

    @property
    def lake_root(self) -> str:
        """The lake root as a path or URL string."""
        return self.lake_url or str(self.home_dir / "lake")

    @property
    def vault_database_url(self) -> str:
        if self.vault_url is not None:
            return self.vault_url.get_secret_value()
        return f"sqlite:///{self.home_dir / 'vault.sqlite'}"

    @property
    def hub_database_url(self) -> str:
        if self.hub_db_url is not None:
            return self.hub_db_url.get_secret_value()
        return f"sqlite:///{self.home_dir / 'hub.sqlite'}"

    @property
    def keys_dir(self) -> Path:
        return self.home_dir / "keys"

    @property
    def sandbox_root(self) -> Path:
        return (self.sandbox_dir or self.home_dir / "sandbox").expanduser().absolute()

    @property
    def enrollments_location(self) -> str:
        return self.enrollments or str(self.sandbox_root / "sponsor" / "enrollments.ndjson")

    @property
    def master_root(self) -> Path:
        """Master-data files (sites, reagent lots, operators); default: the sandbox's."""
        return (self.master_dir or self.sandbox_root / "master").expanduser().absolute()

    @property
    def hl7_inbox_dir(self) -> Path:
        return (self.hl7_inbox or self.sandbox_root / "clinical" / "hl7").expanduser().absolute()

    @property
    def vault_backups(self) -> Path:
        """Where vault_maintenance keeps its daily vault backups (default: under the home)."""
        return (self.vault_backup_dir or self.home_dir / "backups").expanduser().absolute()

    @property
    def roles_file(self) -> Path:
        return self.home_dir / "roles.yaml"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (used by tests and the CLI)."""
    return Settings(**overrides)  # type: ignore[arg-type]
