"""Vault keys: one key per purpose, each in numbered versions, from a key provider.

=========== ============================================================================
purpose     use
=========== ============================================================================
``index``   HMAC-SHA256 key of the blind indexes (and of the demographic linkage hashes)
``kek``     key-encryption key: wraps the AES-256-GCM data keys that encrypt identifiers
``audit``   Ed25519 private key (32-byte seed) that signs audit-log checkpoints
=========== ============================================================================

Every key is 32 random bytes. Versions count up from 1; the vault records which version it
uses in its database (``vault_meta``), on every COI row (index version), on every data key
(KEK version) and on every checkpoint (audit key version), so a newer version can be
provisioned before the vault is rotated onto it.

Providers:

* :class:`FileKeyProvider` — the embedded default: ``CMOHUB_HOME/keys/<purpose>.v<N>.key``,
  created with mode 0600 in a 0700 folder. A key file that its group or others can read is
  refused (``VAULT_KEY_PERMISSIONS``), as ssh does with private keys.
* :class:`EnvKeyProvider` — production: ``CMOHUB_VAULT_KEY_<PURPOSE>_V<N>`` variables
  (base64 of the 32 bytes), e.g. ``CMOHUB_VAULT_KEY_INDEX_V1``, injected by the deployment's
  secret store (Kubernetes secrets, Airflow's secrets backend via :class:`MappingKeyProvider`).
  It cannot create keys: provision the next version, then run ``cmohub vault rotate``.
* :class:`MemoryKeyProvider` — throwaway keys for ``Vault.ephemeral()`` and tests.

Errors (:class:`~cmohub.errors.ConfigError`): ``VAULT_KEY_MISSING``,
``VAULT_KEY_PERMISSIONS``, ``VAULT_KEY_INVALID``, ``VAULT_KEY_READONLY``. Messages name the
file or variable, never key material.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from cmohub.crypto.envelope import KEY_BYTES, generate_key
from cmohub.errors import ConfigError


class KeyPurpose(StrEnum):
    INDEX = "index"
    KEK = "kek"
    AUDIT = "audit"


class KeyProvider(Protocol):
    """Where vault keys come from."""

    def versions(self, purpose: KeyPurpose) -> list[int]:
        """The versions of ``purpose`` this provider holds, ascending (possibly empty)."""
        ...

    def load(self, purpose: KeyPurpose, version: int) -> bytes:
        """The 32-byte key; ConfigError VAULT_KEY_MISSING / _PERMISSIONS / _INVALID."""
        ...

    def create(self, purpose: KeyPurpose) -> int:
        """Create the next version and return its number; VAULT_KEY_READONLY if impossible."""
        ...


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "key is not valid base64", code="VAULT_KEY_INVALID", where=where
        ) from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"key must be {KEY_BYTES} bytes", code="VAULT_KEY_INVALID", where=where)
    return key


def _missing(purpose: KeyPurpose, version: int, where: str) -> ConfigError:
    return ConfigError(
        f"the {purpose.value} key version {version} is missing (run 'cmohub vault init', or "
        "provision it in the secret store)",
        code="VAULT_KEY_MISSING",
        where=where,
    )


class FileKeyProvider:
    """Keys in files ``<directory>/<purpose>.v<N>.key`` (mode 0600; base64 after a header)."""

    _NAME = re.compile(r"(index|kek|audit)\.v([1-9][0-9]{0,8})\.key")
    _HEADER = "cmohub-vault-key/1"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"FileKeyProvider({str(self.directory)!r})"

    def path(self, purpose: KeyPurpose, version: int) -> Path:
        return self.directory / f"{purpose.value}.v{version}.key"

    def versions(self, purpose: KeyPurpose) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as error:
            raise ConfigError(
                f"cannot list the key folder ({error.strerror})",
                code="VAULT_KEY_MISSING",
                where=str(self.directory),
            ) from None
        found = []
        for name in names:
            match = self._NAME.fullmatch(name)
            if match and match.group(1) == purpose.value:
                found.append(int(match.group(2)))
        return sorted(found)

    def load(self, purpose: KeyPurpose, version: int) -> bytes:
        path = self.path(purpose, version)
        where = str(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise _missing(purpose, version, where) from None
        except OSError as error:
            raise ConfigError(
                f"cannot open the key file ({error.strerror}; symbolic links are refused)",
                code="VAULT_KEY_PERMISSIONS",
                where=where,
            ) from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(
                    "key path is not a regular file", code="VAULT_KEY_INVALID", where=where
                )
            if info.st_mode & 0o077:
                raise ConfigError(
                    f"key file is accessible by group or others (mode "
                    f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}",
                    code="VAULT_KEY_PERMISSIONS",
                    where=where,
                )
            data = handle.read(4096)
        try:
            header, body = data.decode("ascii").split("\n", 1)
        except (UnicodeDecodeError, ValueError):
            raise ConfigError(
                "key file is not in cmohub's key format", code="VAULT_KEY_INVALID", where=where
            ) from None
        if header.split() != [self._HEADER, purpose.value, f"v{version}"]:
            raise ConfigError(
                f"key file header does not say '{self._HEADER} {purpose.value} v{version}'",
                code="VAULT_KEY_INVALID",
                where=where,
            )
        return _decode(body, where)

    def create(self, purpose: KeyPurpose) -> int:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = self.versions(purpose)
        version = (existing[-1] if existing else 0) + 1
        path = self.path(purpose, version)
        content = (
            f"{self._HEADER} {purpose.value} v{version}\n"
            f"{base64.b64encode(generate_key()).decode('ascii')}\n"
        ).encode("ascii")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            # Another process created this version at the same moment: use the next one.
            return self.create(purpose)
        except OSError as error:
            raise ConfigError(
                f"cannot create the key file ({error.strerror})",
                code="VAULT_KEY_PERMISSIONS",
                where=str(path),
            ) from None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        return version


class MappingKeyProvider:
    """Keys in a mapping of names to base64 text (environment, or a secrets backend)."""

    def __init__(self, secrets: Mapping[str, str], *, prefix: str = "CMOHUB_VAULT_KEY_") -> None:
        self._secrets = secrets
        self._prefix = prefix
        self._name = re.compile(re.escape(prefix) + r"(INDEX|KEK|AUDIT)_V([1-9][0-9]{0,8})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self._prefix!r})"

    def variable(self, purpose: KeyPurpose, version: int) -> str:
        return f"{self._prefix}{purpose.value.upper()}_V{version}"

    def versions(self, purpose: KeyPurpose) -> list[int]:
        found = []
        for name in self._secrets:
            match = self._name.fullmatch(name)
            if match and match.group(1) == purpose.value.upper():
                found.append(int(match.group(2)))
        return sorted(found)

    def load(self, purpose: KeyPurpose, version: int) -> bytes:
        name = self.variable(purpose, version)
        text = self._secrets.get(name)
        if text is None:
            raise _missing(purpose, version, name)
        return _decode(text, name)

    def create(self, purpose: KeyPurpose) -> int:
        existing = self.versions(purpose)
        nxt = (existing[-1] if existing else 0) + 1
        raise ConfigError(
            f"this key provider cannot create keys: provision {self.variable(purpose, nxt)} "
            "(base64 of 32 random bytes) in the secret store, then run the command again",
            code="VAULT_KEY_READONLY",
        )


class EnvKeyProvider(MappingKeyProvider):
    """Keys in ``CMOHUB_VAULT_KEY_<PURPOSE>_V<N>`` environment variables."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(os.environ if environ is None else environ)


class MemoryKeyProvider:
    """Throwaway keys held in memory (ephemeral vaults and tests)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[KeyPurpose, int], bytes] = {}

    def __repr__(self) -> str:
        return "MemoryKeyProvider()"

    @classmethod
    def generated(cls) -> MemoryKeyProvider:
        """A provider holding version 1 of every purpose."""
        provider = cls()
        for purpose in KeyPurpose:
            provider.create(purpose)
        return provider

    def versions(self, purpose: KeyPurpose) -> list[int]:
        return sorted(v for p, v in self._keys if p is purpose)

    def load(self, purpose: KeyPurpose, version: int) -> bytes:
        try:
            return self._keys[(purpose, version)]
        except KeyError:
            raise _missing(purpose, version, "memory") from None

    def create(self, purpose: KeyPurpose) -> int:
        existing = self.versions(purpose)
        version = (existing[-1] if existing else 0) + 1
        self._keys[(purpose, version)] = generate_key()
        return version

    def forget(self, purpose: KeyPurpose, version: int) -> None:
        """Drop a key version (tests: a key that went missing)."""
        self._keys.pop((purpose, version), None)
