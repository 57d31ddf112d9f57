"""Where the hub keeps OpenPGP keys, and the pins that say which sender key a feed trusts.

Layout under ``CMOHUB_HOME/keys/openpgp/`` (the embedded default; production mounts the same
folder from a secret store)::

    sponsor.sec.asc          the hub's secret key (mode 0600): decrypts CMO deliveries, signs
                             published releases
    sponsor.pub.asc          its public key: what CMOs encrypt to and recipients verify with
    sponsor.passphrase       the passphrase (mode 0600) unless CMOHUB_OPENPGP_PASSPHRASE[_FILE]
    senders/<feed>.pub.asc   each CMO feed's public key, as received out of band
    pins.json                {"<feed>": "<40-hex fingerprint>"}: the key a feed accepts
    sandbox/<feed>.sec.asc   the sandbox CMOs' own secret keys (the sandbox plays the CMO side)

A feed's pinned fingerprint comes from its mapping (``source.options.sender_fingerprint``)
when the mapping names one, otherwise from ``pins.json`` (written by ``cmohub keys import``
after the fingerprint was confirmed with the CMO by another channel). Either way the key file
must carry exactly that fingerprint (CRYPTO_PIN_MISMATCH otherwise).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cmohub.crypto.openpgp import (
    PublicKey,
    SecretKey,
    generate_key,
    load_public_key,
    load_secret_key,
    normalize_fingerprint,
    write_private,
)
from cmohub.errors import ConfigError, unreadable_as
from cmohub.sensitive import Sensitive
from cmohub.settings import Settings

HUB_KEY = "sponsor"
HUB_NAME = "Sandbox Therapeutics hub"
HUB_EMAIL = "cmohub@sponsor.example.invalid"


def read_passphrase(*, env: str | None = None, file: Path | None = None) -> Sensitive[str] | None:
    """A passphrase from an environment variable or a file (first line), never from argv."""
    if env:
        value = os.environ.get(env)
        if value:
            return Sensitive(value)
    if file is not None:
        with unreadable_as(
            ConfigError, "the passphrase file", code="CRYPTO_PASSPHRASE_FILE", where=file
        ):
            text = file.read_text(encoding="utf-8")
        return Sensitive(text.splitlines()[0] if text else "")
    return None


def _feed_name(feed: str) -> str:
    if not feed or not all(c.isalnum() or c in "_-." for c in feed) or feed.startswith("."):
        raise ConfigError("a feed name is letters, digits, '_', '-' and '.'", where=feed)
    return feed


@dataclass(frozen=True)
class Keyring:
    """The hub's OpenPGP key folder (see the module docstring)."""

    root: Path
    settings: Settings | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Keyring:
        return cls(settings.keys_dir / "openpgp", settings)

    # --- the hub's own key ---------------------------------------------------------------------

    @property
    def hub_secret_path(self) -> Path:
        return self.root / f"{HUB_KEY}.sec.asc"

    @property
    def hub_public_path(self) -> Path:
        return self.root / f"{HUB_KEY}.pub.asc"

    @property
    def hub_passphrase_path(self) -> Path:
        return self.root / f"{HUB_KEY}.passphrase"

    def hub_passphrase(self) -> Sensitive[str] | None:
        settings = self.settings
        if settings is not None and settings.openpgp_passphrase is not None:
            return Sensitive(settings.openpgp_passphrase.get_secret_value())
        if settings is not None and settings.openpgp_passphrase_file is not None:
            return read_passphrase(file=settings.openpgp_passphrase_file)
        if self.hub_passphrase_path.exists():
            return read_passphrase(file=self.hub_passphrase_path)
        return None

    def hub_secret(self) -> SecretKey:
        if not self.hub_secret_path.exists():
            raise ConfigError(
                "the hub has no OpenPGP key yet: run `cmohub keys init`",
                code="CRYPTO_HUB_KEY_MISSING",
                where=str(self.hub_secret_path),
            )
        _check_private(self.hub_secret_path)
        return load_secret_key(self.hub_secret_path, passphrase=self.hub_passphrase())

    def hub_public(self) -> PublicKey:
        return load_public_key(self.hub_public_path)

    def ensure_hub_key(self, *, name: str = HUB_NAME, email: str = HUB_EMAIL) -> SecretKey:
        """The hub's key pair, created (with a random passphrase file) on first use."""
        if self.hub_secret_path.exists():
            return self.hub_secret()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        passphrase = self.hub_passphrase()
        if passphrase is None:
            passphrase = Sensitive(secrets.token_urlsafe(32))
            write_private(self.hub_passphrase_path, passphrase.reveal().encode() + b"\n")
        key = generate_key(name, email, passphrase=passphrase)
        write_private(self.hub_secret_path, key.armored)
        self.hub_public_path.write_bytes(key.public.armored)
        return key

    # --- senders and pins ----------------------------------------------------------------------

    def sender_path(self, feed: str) -> Path:
        return self.root / "senders" / f"{_feed_name(feed)}.pub.asc"

    @property
    def pins_path(self) -> Path:
        return self.root / "pins.json"

    def pins(self) -> dict[str, str]:
        if not self.pins_path.exists():
            return {}
        try:
            data = json.loads(self.pins_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(
                "pins.json is not readable JSON",
                code="CRYPTO_PINS_INVALID",
                where=str(self.pins_path),
            ) from None
        if not isinstance(data, dict):
            raise ConfigError("pins.json must be an object", code="CRYPTO_PINS_INVALID")
        return {str(k): normalize_fingerprint(str(v)) for k, v in data.items()}

    def pin(self, feed: str) -> str | None:
        return self.pins().get(feed)

    def import_sender(self, feed: str, key: PublicKey, *, fingerprint: str) -> Path:
        """Store a CMO's public key for ``feed`` and pin its fingerprint (checked first)."""
        key.pinned(fingerprint)
        target = self.sender_path(feed)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.write_bytes(key.armored)
        pins = self.pins()
        pins[feed] = key.fingerprint
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.pins_path.write_text(json.dumps(pins, indent=2, sort_keys=True) + "\n")
        return target

    def sender(self, feed: str, *, pinned: str | None = None) -> PublicKey:
        """The sender key of ``feed``, checked against its pin (mapping option or pins.json)."""
        fingerprint = pinned or self.pin(feed)
        if fingerprint is None:
            raise ConfigError(
                f"no pinned sender fingerprint for {feed}: set source.options."
                "sender_fingerprint in its mapping or run `cmohub keys import`",
                code="CMO_FEED_UNPINNED",
                where=feed,
            )
        path = self.sender_path(feed)
        if not path.exists():
            raise ConfigError(
                f"no sender key for {feed}: run "
                f"`cmohub keys import {feed} KEY.asc --fingerprint FPR`",
                code="CMO_SENDER_KEY_MISSING",
                where=str(path),
            )
        return load_public_key(path, pinned=fingerprint)

    # --- sandbox CMO keys ----------------------------------------------------------------------

    def sandbox_path(self, feed: str) -> Path:
        return self.root / "sandbox" / f"{_feed_name(feed)}.sec.asc"

    def ensure_sandbox_cmo(self, feed: str, *, name: str, email: str) -> SecretKey:
        """The sandbox CMO's key pair for ``feed`` (created once), imported and pinned as sender."""
        path = self.sandbox_path(feed)
        if path.exists():
            key = load_secret_key(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = generate_key(name, email)
            write_private(path, key.armored)
        if self.pin(feed) != key.fingerprint or not self.sender_path(feed).exists():
            self.import_sender(feed, key.public, fingerprint=key.fingerprint)
        return key


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o077
    if mode:
        raise ConfigError(
            f"{path.name} is readable by others (mode {path.stat().st_mode & 0o777:o}): "
            "chmod 600 it",
            code="CRYPTO_KEY_PERMISSIONS",
            where=str(path),
        )
