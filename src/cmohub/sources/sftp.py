"""SFTP: a CMO's exchange folder on its (or our) SFTP server. The only importer of paramiko.

Authentication is by key only (no passwords, no agent, no ``~/.ssh`` keys picked up by
accident) and the server's host key is **pinned**: the connection is refused unless the server
presents exactly the configured key (an unknown or changed host key is a man-in-the-middle
until proven otherwise). Settings come from an Airflow Connection (see
:mod:`cmohub.airflow.connections`): ``host``, ``port``, ``login``; ``extra.private_key``
(OpenSSH or PEM text) or ``extra.key_file``; ``password`` (only as the private key's
passphrase); ``extra.host_key`` (``ssh-ed25519 AAAA...``, as in ``known_hosts``).

The source lists the feed's folder recursively and reads files whole (up to the feed's
size limit); it never deletes or renames what the CMO delivered. :meth:`SftpSource.upload`
(used by ``cmohub sandbox deliver``) writes under a temporary ``.part`` name and renames when
complete, the convention the listing relies on to skip partial uploads.

Errors: server unreachable or timing out → SOURCE_UNAVAILABLE (transient, retried); host key
unknown or different → SFTP_HOST_KEY_MISMATCH; authentication refused → SFTP_AUTH_FAILED;
missing folder or file → SFTP_NOT_FOUND; bad settings → SFTP_CONFIG_INVALID (all terminal).
"""

from __future__ import annotations

import base64
import binascii
import io
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cmohub.errors import (
    ConfigError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
    unreadable_as,
)
from cmohub.sensitive import Sensitive
from cmohub.sources.delivery import RemoteFile


@dataclass(frozen=True)
class SftpSettings:
    """Where and how to connect (secrets stay :class:`Sensitive`)."""

    host: str
    port: int
    username: str
    host_key: str  # "<type> <base64>" as in known_hosts, pinned
    private_key: Sensitive[str]
    key_passphrase: Sensitive[str] | None = None
    timeout_seconds: float = 30.0

    def __repr__(self) -> str:
        return f"SftpSettings({self.username}@{self.host}:{self.port})"

    @classmethod
    def from_endpoint(cls, endpoint: Any) -> SftpSettings:
        """From an :class:`cmohub.airflow.connections.Endpoint` (or anything shaped like it)."""
        extra = dict(getattr(endpoint, "extra", None) or {})
        key_text = extra.get("private_key")
        key_file = extra.get("key_file")
        if not key_text and key_file:
            with unreadable_as(
                ConfigError, "the SFTP key file", code="SFTP_CONFIG_INVALID", where=key_file
            ):
                key_text = Path(str(key_file)).read_text(encoding="utf-8")
        host_key = extra.get("host_key")
        login = getattr(endpoint, "login", None)
        where = getattr(endpoint, "conn_id", None) or "sftp"
        if not key_text or not host_key or not login or not getattr(endpoint, "host", None):
            raise ConfigError(
                "an SFTP connection needs host, login, extra.private_key (or key_file) and "
                "extra.host_key (the server's pinned public key)",
                code="SFTP_CONFIG_INVALID",
                where=where,
            )
        password = getattr(endpoint, "password", None)
        passphrase = password if isinstance(password, Sensitive) else None
        if password is not None and passphrase is None:
            passphrase = Sensitive(str(password))
        return cls(
            host=str(endpoint.host),
            port=int(getattr(endpoint, "port", None) or 22),
            username=str(login),
            host_key=str(host_key),
            private_key=Sensitive(str(key_text)),
            key_passphrase=passphrase,
            timeout_seconds=float(extra.get("timeout", 30.0)),
        )


def _load_private_key(text: Sensitive[str], passphrase: Sensitive[str] | None) -> paramiko.PKey:
    data = text.reveal().encode()
    secret = passphrase.reveal() if passphrase is not None else None
    password = secret.encode() if secret is not None else None
    loaded: Any
    try:
        try:
            loaded = serialization.load_ssh_private_key(data, password=password)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError):
        raise ConfigError(
            "the SFTP private key cannot be read (wrong format or passphrase)",
            code="SFTP_CONFIG_INVALID",
        ) from None
    key_class: type[paramiko.PKey]
    if isinstance(loaded, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    elif isinstance(loaded, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    else:
        raise ConfigError("unsupported SFTP private key type", code="SFTP_CONFIG_INVALID")
    try:
        return key_class.from_private_key(io.StringIO(data.decode()), password=secret)
    except (paramiko.SSHException, ValueError):
        raise ConfigError(
            "the SFTP private key cannot be read", code="SFTP_CONFIG_INVALID"
        ) from None


def parse_host_key(line: str) -> paramiko.PKey:
    """A pinned host key from ``<type> <base64> [comment]`` (a known_hosts line without host)."""
    parts = line.split()
    if len(parts) < 2:
        raise ConfigError("host_key must be '<type> <base64>'", code="SFTP_CONFIG_INVALID")
    key_type, blob = parts[0], parts[1]
    try:
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(blob, validate=True))
    except (binascii.Error, paramiko.SSHException, ValueError, TypeError):
        raise ConfigError(
            "host_key is not a valid public key", code="SFTP_CONFIG_INVALID"
        ) from None


def _known_host_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


@contextmanager
def _errors(where: str) -> Iterator[None]:
    try:
        yield
    except paramiko.BadHostKeyException:
        raise SourceError(
            "the SFTP server presented a host key other than the pinned one",
            code="SFTP_HOST_KEY_MISMATCH",
            where=where,
        ) from None
    except paramiko.AuthenticationException:
        raise SourceError(
            "the SFTP server refused our key", code="SFTP_AUTH_FAILED", where=where
        ) from None
    except TimeoutError as error:
        raise SourceTimeout("the SFTP server did not answer in time", where=where) from error
    except FileNotFoundError:
        raise SourceError("no such file or folder", code="SFTP_NOT_FOUND", where=where) from None
    except PermissionError:
        raise SourceError("permission denied", code="SFTP_PERMISSION", where=where) from None
    except paramiko.SSHException as error:
        if "known_hosts" in str(error) or "not found in known" in str(error):
            raise SourceError(
                "the SFTP server's host key is not the pinned one",
                code="SFTP_HOST_KEY_MISMATCH",
                where=where,
            ) from None
        raise SourceUnavailable(
            f"SSH connection failed ({type(error).__name__})", where=where
        ) from error
    except OSError as error:
        raise SourceUnavailable(
            f"the SFTP server is unreachable ({error.strerror or type(error).__name__})",
            where=where,
        ) from error


class SftpSource:
    """A :class:`~cmohub.sources.delivery.DeliverySource` over one folder of an SFTP server."""

    def __init__(self, settings: SftpSettings, remote_dir: str = "/") -> None:
        self.settings = settings
        self.remote_dir = remote_dir.rstrip("/") or "/"
        self._where = f"sftp://{settings.host}:{settings.port}{self.remote_dir}"
        pinned = parse_host_key(settings.host_key)
        pkey = _load_private_key(settings.private_key, settings.key_passphrase)
        client = paramiko.SSHClient()
        client.get_host_keys().add(
            _known_host_name(settings.host, settings.port), pinned.get_name(), pinned
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        with _errors(self._where):
            client.connect(
                settings.host,
                port=settings.port,
                username=settings.username,
                pkey=pkey,
                look_for_keys=False,
                allow_agent=False,
                timeout=settings.timeout_seconds,
                banner_timeout=settings.timeout_seconds,
                auth_timeout=settings.timeout_seconds,
            )
            self._sftp = client.open_sftp()
            channel = self._sftp.get_channel()
            if channel is not None:
                channel.settimeout(settings.timeout_seconds)
        self._client = client

    def __repr__(self) -> str:
        return f"SftpSource({self._where!r})"

    def _remote(self, path: str) -> str:
        relative = PurePosixPath(path)
        if relative.is_absolute() or ".." in relative.parts:
            raise SourceError("a path outside the feed's folder", code="SOURCE_PATH_INVALID")
        return str(PurePosixPath(self.remote_dir) / relative)

    def list_files(self) -> list[RemoteFile]:
        files: list[RemoteFile] = []
        pending = [""]
        with _errors(self._where):
            while pending:
                folder = pending.pop()
                remote = self._remote(folder) if folder else self.remote_dir
                for entry in sorted(self._sftp.listdir_attr(remote), key=lambda e: e.filename):
                    relative = f"{folder}/{entry.filename}" if folder else entry.filename
                    mode = entry.st_mode or 0
                    if stat.S_ISDIR(mode):
                        pending.append(relative)
                    elif stat.S_ISREG(mode):
                        files.append(
                            RemoteFile(
                                relative, int(entry.st_size or 0), float(entry.st_mtime or 0)
                            )
                        )
        return sorted(files, key=lambda f: f.path)

    def read(self, path: str, *, max_bytes: int) -> bytes:
        with _errors(f"{self._where}/{path}"), self._sftp.open(self._remote(path), "rb") as handle:
            handle.prefetch()
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise SourceError(
                f"the file is larger than the limit of {max_bytes} bytes",
                code="FILE_TOO_LARGE",
                where=path,
            )
        return bytes(data)

    def upload(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` as ``path.part`` first, then rename (atomic to readers)."""
        target = self._remote(path)
        partial = f"{target}.part"
        with _errors(f"{self._where}/{path}"):
            self._makedirs(str(PurePosixPath(target).parent))
            with self._sftp.open(partial, "wb") as handle:
                handle.set_pipelined(True)
                handle.write(data)
            self._sftp.posix_rename(partial, target)

    def _makedirs(self, folder: str) -> None:
        parts = PurePosixPath(folder).parts
        current = PurePosixPath(parts[0]) if parts else PurePosixPath("/")
        for part in parts[1:]:
            current = current / part
            try:
                self._sftp.stat(str(current))
            except FileNotFoundError:
                self._sftp.mkdir(str(current))

    def close(self) -> None:
        self._client.close()
