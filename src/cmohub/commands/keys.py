"""``cmohub keys``: OpenPGP keys — the hub's own key pair, CMO sender keys and their pins.

Passphrases are read from an environment variable or a file, never from the command line
(``--passphrase-env NAME``, ``--passphrase-file PATH``; the hub's key uses
``CMOHUB_OPENPGP_PASSPHRASE`` / ``CMOHUB_OPENPGP_PASSPHRASE_FILE`` or its passphrase file).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from cmohub.settings import load_settings

app = typer.Typer(
    help="OpenPGP keys: the hub's key pair, CMO sender keys and pinned fingerprints.",
    no_args_is_help=True,
)

PASSPHRASE_ENV = typer.Option(
    "--passphrase-env", help="Name of the environment variable holding the passphrase."
)
PASSPHRASE_FILE = typer.Option("--passphrase-file", help="File whose first line is the passphrase.")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "key"


@app.command("generate")
def generate(
    *,
    name: Annotated[str, typer.Option("--name", help="User ID name, e.g. 'Acme exchange'.")],
    email: Annotated[str, typer.Option("--email", help="User ID e-mail address.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for NAME.sec.asc and NAME.pub.asc.")],
    passphrase_env: Annotated[str | None, PASSPHRASE_ENV] = None,
    passphrase_file: Annotated[Path | None, PASSPHRASE_FILE] = None,
    bits: Annotated[int, typer.Option("--bits", min=2048, help="RSA key size.")] = 3072,
    expires_days: Annotated[
        int | None, typer.Option("--expires-days", min=1, help="Expire after N days.")
    ] = None,
) -> None:
    """Generate a key pair (RSA: signing primary key, encryption subkey; AES-256 preferred).

    Example:  cmohub keys generate --name "Sandbox CMO" --email cmo@example.invalid --out keys/
    """
    from datetime import timedelta

    from cmohub.crypto.keyring import read_passphrase
    from cmohub.crypto.openpgp import generate_key, write_private

    passphrase = read_passphrase(env=passphrase_env, file=passphrase_file)
    key = generate_key(
        name,
        email,
        passphrase=passphrase,
        bits=bits,
        expires_after=timedelta(days=expires_days) if expires_days else None,
    )
    out.mkdir(parents=True, exist_ok=True)
    stem = _slug(name)
    secret, public = out / f"{stem}.sec.asc", out / f"{stem}.pub.asc"
    write_private(secret, key.armored)
    public.write_bytes(key.public.armored)
    typer.echo(f"fingerprint  {key.fingerprint}")
    typer.echo(f"secret key   {secret}  (mode 0600{', protected' if passphrase else ''})")
    typer.echo(f"public key   {public}")


@app.command("init")
def init() -> None:
    """Create the hub's key pair under CMOHUB_HOME/keys/openpgp (once) and show its fingerprint.

    Example:  cmohub keys init
    """
    from cmohub.crypto.keyring import Keyring

    keyring = Keyring.for_settings(load_settings())
    existed = keyring.hub_secret_path.exists()
    key = keyring.ensure_hub_key()
    typer.echo(f"{'hub key' if existed else 'created hub key'}  {key.fingerprint}")
    typer.echo(f"public key  {keyring.hub_public_path}  (send this to each CMO)")


@app.command("import")
def import_key(
    feed: Annotated[str, typer.Argument(help="The CMO feed, e.g. cmo_acme.")],
    key_file: Annotated[Path, typer.Argument(help="The CMO's public key (armored or binary).")],
    *,
    fingerprint: Annotated[
        str,
        typer.Option(
            "--fingerprint",
            help="The full fingerprint the CMO confirmed by another channel (phone, letter).",
        ),
    ],
) -> None:
    """Store a CMO's public key for FEED and pin its full fingerprint.

    Example:  cmohub keys import cmo_acme acme.pub.asc --fingerprint "D1C4 ... 9F0A"
    """
    from cmohub.crypto.keyring import Keyring
    from cmohub.crypto.openpgp import load_public_key

    key = load_public_key(key_file, pinned=fingerprint)
    path = Keyring.for_settings(load_settings()).import_sender(feed, key, fingerprint=fingerprint)
    typer.echo(f"pinned {feed} to {key.fingerprint} ({', '.join(key.user_ids)})")
    typer.echo(f"stored {path}")


@app.command("list")
def list_keys() -> None:
    """The hub's key and every pinned CMO key, with validity and revocation.

    Example:  cmohub keys list
    """
    from cmohub.crypto.keyring import Keyring
    from cmohub.crypto.openpgp import load_public_key

    keyring = Keyring.for_settings(load_settings())
    if keyring.hub_public_path.exists():
        hub = load_public_key(keyring.hub_public_path)
        typer.echo(f"hub        {hub.fingerprint}  {hub.primary.describe()}  {_validity(hub)}")
    else:
        typer.echo("hub        (none: run `cmohub keys init`)")
    for feed, pin in sorted(keyring.pins().items()):
        path = keyring.sender_path(feed)
        if not path.exists():
            typer.echo(f"{feed:<10} {pin}  key file missing")
            continue
        key = load_public_key(path)
        match = "" if key.fingerprint == pin else "  FILE DOES NOT MATCH THE PIN"
        typer.echo(f"{feed:<10} {pin}  {key.primary.describe()}  {_validity(key)}{match}")


def _validity(key: object) -> str:
    from cmohub.crypto.openpgp import PublicKey

    assert isinstance(key, PublicKey)
    primary = key.primary
    if primary.revoked_at is not None:
        return f"REVOKED {primary.revoked_at:%Y-%m-%d} ({primary.revocation_reason})"
    if primary.expires is not None:
        return f"expires {primary.expires:%Y-%m-%d}"
    return "no expiry"


@app.command("public")
def public() -> None:
    """Print the hub's public key (armored), to send to a CMO.

    Example:  cmohub keys public > sponsor.pub.asc
    """
    from cmohub.crypto.keyring import Keyring

    typer.echo(Keyring.for_settings(load_settings()).hub_public().armored.decode(), nl=False)
