"""``cmohub vault``: the keyed mapping vault (identifiers <-> COIs), for people.

Pipelines use the vault through the library; these commands are for data engineers (init,
status, rotate) and privacy officers (reveal, withdraw, audit). The acting person is the
operating-system user unless ``--actor`` names someone else (both are recorded); their role
comes from ``CMOHUB_HOME/roles.yaml``.
"""

from __future__ import annotations

import getpass
import json
import sys
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cmohub.errors import ConfigError, HubError, StoreUnavailable, VaultError
from cmohub.identifiers import format_coi
from cmohub.identity import Actor, SubjectIdentity
from cmohub.sensitive import Sensitive
from cmohub.settings import load_settings

if TYPE_CHECKING:
    from cmohub.vault import Checkpoint, Vault
    from cmohub.vault.results import CopyCheck

app = typer.Typer(
    help="The keyed mapping vault: tokenize, reveal, rotate keys, audit.", no_args_is_help=True
)
audit_app = typer.Typer(
    help="The vault's audit log: verify, report, checkpoint.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")

DEFAULT_EVENT = "default"


class RotateWhat(StrEnum):
    INDEX = "index"
    KEK = "kek"
    AUDIT = "audit"


class ReportFormat(StrEnum):
    CSV = "csv"
    HTML = "html"


def _actor(name: str | None) -> Actor:
    from cmohub.vault.roles import load_roles

    settings = load_settings()
    who = name or getpass.getuser()
    return Actor(name=who, role=load_roles(settings.roles_file).session_role(who), feed="cli")


def _open(*, initialize: bool = False) -> Vault:
    from cmohub.vault import open_vault

    return open_vault(load_settings(), initialize=initialize)


ACTOR_OPTION = typer.Option(
    None, "--actor", help="Who is acting (default: the operating-system user)."
)


@app.command("init")
def init(
    privacy_officer: list[str] = typer.Option(  # noqa: B008 - typer's declaration style
        [],
        "--privacy-officer",
        help="Grant NAME the privacy-officer role in a new roles file (repeatable). "
        "Without it, the roles file grants nothing.",
    ),
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Create keys, the database and the roles file in CMOHUB_HOME (idempotent).

    Example:  cmohub vault init --privacy-officer alice
    """
    from cmohub.vault import SYSTEMS_FILE
    from cmohub.vault.normalize import SYSTEMS_TEMPLATE
    from cmohub.vault.roles import roles_template

    settings = load_settings()
    home = settings.home_dir
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    wrote = []
    for path, text in (
        (settings.roles_file, roles_template(privacy_officer)),
        (home / SYSTEMS_FILE, SYSTEMS_TEMPLATE),
    ):
        if not path.exists():
            _write_private(path, text)
            wrote.append(path.name)
    if privacy_officer and "roles.yaml" not in wrote:
        typer.echo(
            f"note: {settings.roles_file} exists and was not changed; edit it to grant roles",
            err=True,
        )
    with _open(initialize=True) as vault:
        result = vault.init(actor=_actor(actor))
        status = vault.status()
    state = "initialized" if result.created else "already initialized (nothing changed)"
    typer.echo(f"vault {state}: {status.database}")
    typer.echo(
        f"  schema {result.schema}; keys: index v{status.index_version}, "
        f"kek v{status.kek_version}, audit v{status.audit_version}"
    )
    if result.keys_created:
        typer.echo(f"  created keys: {', '.join(result.keys_created)} in {settings.keys_dir}")
    if wrote:
        typer.echo(f"  wrote {', '.join(wrote)} in {home}")


def _write_private(path: Path, text: str) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _read_identifier_value() -> str:
    if sys.stdin.isatty():
        value = getpass.getpass("identifier value (not echoed): ")
    else:
        lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
        if len(lines) != 1:
            raise VaultError(
                f"expected exactly one identifier value on standard input, got {len(lines)} lines",
                code="VAULT_IDENTIFIER_INVALID",
            )
        value = lines[0]
    return value


@app.command("tokenize")
def tokenize(
    system: str = typer.Option(..., "--system", help="Identifier system URI (e.g. an MRN system)."),
    event: str = typer.Option(
        DEFAULT_EVENT, "--event", help="Therapy event (enrollment or treatment number)."
    ),
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Print the COI of an identifier read from standard input (never from the command line).

    Example:  cmohub vault tokenize --system urn:cmohub:sandbox:mrn:A9990 --event E-1 < mrn.txt

    The value is read from stdin so that it never lands in shell history or process lists; on a
    terminal it is prompted for without echo. Prints the COI (16 characters, check character last).
    """
    value = _read_identifier_value()
    identity = SubjectIdentity(system=system, value=Sensitive(value))
    with _open() as vault:
        coi = vault.tokenize(identity, event, actor=_actor(actor))
    typer.echo(str(coi))


@app.command("enroll")
def enroll(
    path: Annotated[
        Path, typer.Argument(help="The sponsor's enrollments.ndjson.", exists=True, dir_okay=False)
    ],
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Adopt the COIs of the sponsor's enrollment register (idempotent; all or nothing).

    Example:  cmohub vault enroll sandbox/sponsor/enrollments.ndjson
    """
    from cmohub.vault.enrollment import load_enrollments

    with path.open(encoding="utf-8") as handle:
        assignments = load_enrollments(handle)
    with _open() as vault:
        result = vault.enroll_many(assignments, actor=_actor(actor))
    typer.echo(f"{result.enrolled} enrolled, {result.already} already in the vault")


@app.command("reveal")
def reveal(
    coi: str = typer.Argument(..., help="The COI, with its check character."),
    purpose: str = typer.Option(..., "--purpose", help="Why re-identification is needed."),
    ticket: str = typer.Option(..., "--ticket", help="The ticket or case that authorizes it."),
    actor: str | None = ACTOR_OPTION,
    allow_pipe: bool = typer.Option(
        False,
        "--allow-pipe",
        help="Print even when standard output is not a terminal (a file or a pipe keeps the "
        "identifier: you are responsible for it).",
    ),
) -> None:
    """Re-identify a COI (privacy officers only): prints the identifier to the terminal.

    Example:  cmohub vault reveal CHA999926AB12C3G --purpose "AE follow-up" --ticket PV-1234

    Every attempt, granted or refused, is recorded in the audit log with the purpose and ticket.
    Refused: exit 1 with VAULT_ACCESS_DENIED, or VAULT_REVEAL_NOT_A_TERMINAL when standard
    output is a file or pipe and --allow-pipe is not given.
    """
    # Refused before anything is decrypted, and audited like the vault's own refusals.
    refused = None
    if not allow_pipe and not sys.stdout.isatty():
        refused = VaultError(
            "standard output is not a terminal: the identifier would be written to a file or "
            "pipe; use --allow-pipe if that is intended",
            code="VAULT_REVEAL_NOT_A_TERMINAL",
        )
    with _open() as vault:
        revealed = vault.reveal(
            coi, actor=_actor(actor), purpose=purpose, ticket=ticket, refused=refused
        )
    typer.echo(f"COI      {format_coi(revealed.coi)}")
    typer.echo(f"system   {revealed.identity.system}")
    # The one place an identifier value is printed: to the privacy officer's terminal.
    typer.echo(f"value    {revealed.identity.value.reveal()}")
    typer.echo(f"event    {revealed.therapy_event}")
    typer.echo(f"created  {revealed.created_at} by {revealed.created_by} ({revealed.origin})")


@app.command("withdraw")
def withdraw(
    coi: str = typer.Argument(..., help="The COI whose subject withdrew consent."),
    reason: str = typer.Option(..., "--reason", help="Why (e.g. the consent record's ID)."),
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Consent withdrawn: destroy the identifier behind a COI; the COI itself stays valid.

    Example:  cmohub vault withdraw CHA999926AB12C3G --reason "consent withdrawn, form CW-17"
    """
    with _open() as vault:
        result = vault.withdraw(coi, actor=_actor(actor), reason=reason)
    if result.already_withdrawn:
        typer.echo(f"{result.coi} was already withdrawn")
    else:
        typer.echo(f"{result.coi} withdrawn: identifier and blind indexes destroyed, COI kept")


@app.command("rotate")
def rotate(
    what: Annotated[RotateWhat, typer.Argument(help="index (re-index), kek (re-wrap) or audit.")],
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Rotate a key: the next version is created (file keys) or must be provisioned (env).

    Example:  cmohub vault rotate index

    index re-computes every blind index; kek re-wraps every data key; audit signs future
    checkpoints with a new key. No COI changes.
    """
    who = _actor(actor)
    with _open() as vault:
        if what is RotateWhat.INDEX:
            result = vault.rotate_index_key(actor=who)
        elif what is RotateWhat.KEK:
            result = vault.rotate_kek(actor=who)
        else:
            result = vault.rotate_audit_key(actor=who)
    if result.from_version == result.to_version:
        typer.echo(f"{what.value} key already at v{result.to_version}")
        return
    unit = "data keys re-wrapped" if what is RotateWhat.KEK else "rows re-indexed"
    extra = "" if what is RotateWhat.AUDIT else f": {result.rows} {unit}"
    typer.echo(f"{what.value} key rotated v{result.from_version} -> v{result.to_version}{extra}")


@app.command("backup")
def backup(
    path: Annotated[Path, typer.Argument(help="The new backup file (never replaced).")],
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Write a consistent copy of the vault database, then check it with the vault's keys.

    Example:  cmohub vault backup /backups/vault-2026-11-26.sqlite

    Safe while pipelines run (SQLite's online backup; a plain copy of vault.sqlite may miss
    committed batches). Recorded in the audit log, with a checkpoint the copy holds. The
    keys are not in the backup: keep CMOHUB_HOME/keys apart from it. SQLite only: a
    PostgreSQL vault is backed up with PostgreSQL's tools (VAULT_BACKUP_UNSUPPORTED).
    """
    with _open() as vault:
        result = vault.backup(path, actor=_actor(actor))
    checked = result.checked
    keys = ", ".join(f"{name} v{version}" for name, version in checked.key_versions.items())
    typer.echo(f"backup written: {result.path} ({result.size:,} bytes)")
    typer.echo(f"  sha256   {result.sha256}")
    typer.echo(_checked_line(checked, f"checkpoint of {result.checkpoint.size} made for it"))
    typer.echo(
        f"  keys     not in the backup: it needs {keys}. Keep a copy of the key files apart "
        "from it; without the index key no identifier is found again, without the KEK none "
        "is revealed"
    )


def _read_witnesses(paths: list[Path]) -> list[Checkpoint]:
    """Checkpoint JSON files kept outside the vault (ValueError / CryptoError if malformed)."""
    from cmohub.vault import Checkpoint

    return [Checkpoint.from_dict(json.loads(p.read_text(encoding="utf-8"))) for p in paths]


def _when_what(event: tuple[str, str] | None) -> dict[str, str] | None:
    return None if event is None else {"at": event[0], "file": event[1]}


def _checked_line(checked: CopyCheck, note: str = "") -> str:
    return (
        f"  checked  audit log intact ({checked.audit_events} events{'; ' + note if note else ''});"
        f" {checked.data_keys} data keys unwrap; {checked.cois_active} active COIs, "
        f"{checked.cois_withdrawn} withdrawn"
    )


@app.command("restore")
def restore(
    path: Annotated[Path, typer.Argument(help="The backup file (read only, never changed).")],
    replace: bool = typer.Option(
        False, "--replace", help="Move the vault that is there aside (it is kept) and restore."
    ),
    witness: list[Path] = typer.Option(  # noqa: B008 - typer's declaration style
        [],
        "--witness",
        help="A checkpoint JSON kept outside the vault (e.g. from the latest published "
        "manifest): how many events the backup lacks, or that it matches.",
        exists=True,
        dir_okay=False,
    ),
    lost_cois: Annotated[
        Path | None,
        typer.Option("--lost-cois", help="Write every COI the backup lacks here (CSV)."),
    ] = None,
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Restore the vault database from a backup, checked with the vault's keys first.

    Example:  cmohub vault restore /backups/vault-2026-11-26.sqlite --replace

    Stop the DAGs first (a vault open in another process is refused). The vault that is
    there is moved aside to vault.sqlite.replaced-<time>, never deleted; the COIs it holds
    that the backup lacks are listed: their subjects' link is gone (a subject that arrives
    again gets a new COI). Recorded in the restored audit log. SQLite only.
    """
    from cmohub.vault import Vault, key_provider_for

    if lost_cois is not None and (lost_cois.exists() or lost_cois.is_symlink()):
        raise typer.BadParameter("the file exists (it is never replaced)", param_hint="--lost-cois")
    try:
        witnesses = _read_witnesses(witness)
    except ValueError as error:
        raise typer.BadParameter(
            f"not a checkpoint JSON ({error})", param_hint="--witness"
        ) from None
    settings = load_settings()
    who = _actor(actor)
    result = Vault.restore(
        path,
        settings.vault_database_url,
        key_provider_for(settings),
        actor=who,
        replace=replace,
        witnesses=witnesses,
        fin=settings.vault_fin,
    )
    typer.echo(f"vault restored: {result.path}")
    typer.echo(f"  from     {result.backup} (sha256 {result.backup_sha256}, unchanged)")
    typer.echo(_checked_line(result.checked))
    typer.echo(f"  recorded restore event {result.checkpoint.size}, with a checkpoint covering it")
    if result.witness_lacks is not None:
        typer.echo(
            f"  witness  the backup lacks {result.witness_lacks} events a witness checkpoint "
            "signs: what happened after it is not in this vault"
        )
    elif witnesses:
        typer.echo("  witness  the backup matches every witness checkpoint")
    if result.replaced is None:
        return
    typer.echo(f"  replaced moved aside to {result.replaced} (kept: evidence, remove it later)")
    if result.lost_cois is None:
        typer.echo(
            f"  lost     unknown: the replaced vault could not be read "
            f"({result.replaced_unreadable})"
        )
        return
    after = result.replaced_events_after
    if result.replaced_diverges:
        typer.echo(
            "  log      the replaced vault's audit log does not continue the backup's (an event "
            "the backup holds differs there): keep the replaced file for the investigation"
        )
    elif after:
        kinds = ", ".join(f"{event} {count}" for event, count in after.items())
        typer.echo(
            f"  log      the replaced vault's audit log has {sum(after.values())} events after "
            f"the backup's ({kinds}): they are in the replaced file only"
        )
    lost = result.lost_cois
    typer.echo(
        f"  lost     {len(lost)} COIs the replaced vault held are not in the backup"
        + (": their subjects' link is gone (see README, restoring a backup)" if lost else "")
    )
    for coi, state in lost[:_LOST_SHOWN]:
        typer.echo(f"           {coi} ({state})")
    if len(lost) > _LOST_SHOWN:
        typer.echo(f"           ... and {len(lost) - _LOST_SHOWN} more (--lost-cois FILE)")
    if lost_cois is not None:
        _write_private(lost_cois, "coi,status\n" + "".join(f"{c},{s}\n" for c, s in lost))
        typer.echo(f"           all {len(lost)} written to {lost_cois}")


_LOST_SHOWN = 20


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Key versions, counts and the last checkpoint (no identifiers).

    Example:  cmohub vault status
    """
    with _open() as vault:
        s = vault.status()
    checkpoint = s.last_checkpoint.to_dict() if s.last_checkpoint else None
    if as_json:
        data = {
            "database": s.database,
            "vault_id": s.vault_id,
            "schema": s.schema,
            "keys": {"index": s.index_version, "kek": s.kek_version, "audit": s.audit_version},
            "provider_versions": s.provider_versions,
            "cois": {
                "active": s.cois_active,
                "withdrawn": s.cois_withdrawn,
                "enrolled": s.cois_enrolled,
            },
            "rows_by_index_version": s.rows_by_index_version,
            "data_keys_by_kek_version": s.data_keys_by_kek_version,
            "aliases": s.aliases,
            "audit_events": s.audit_events,
            "last_checkpoint": checkpoint,
            "last_backup": _when_what(s.last_backup),
            "last_restore": _when_what(s.last_restore),
        }
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    typer.echo(f"vault      {s.vault_id} ({s.database}, schema {s.schema})")
    typer.echo(
        f"keys       index v{s.index_version}, kek v{s.kek_version}, audit v{s.audit_version}"
        f" (provider holds {', '.join(f'{p} {v}' for p, v in s.provider_versions.items())})"
    )
    typer.echo(
        f"COIs       {s.cois_active} active ({s.cois_enrolled} enrolled), "
        f"{s.cois_withdrawn} withdrawn; {s.aliases} merged identifiers"
    )
    typer.echo(
        f"rows       by index version {s.rows_by_index_version}; "
        f"data keys by KEK version {s.data_keys_by_kek_version}"
    )
    if s.last_backup is not None or s.last_restore is not None:
        backup = f"last {s.last_backup[0]} ({s.last_backup[1]})" if s.last_backup else "none"
        restore = (
            f"; restored {s.last_restore[0]} from {s.last_restore[1]}" if s.last_restore else ""
        )
        typer.echo(f"backups    {backup}{restore}")
    elif s.database.startswith("sqlite"):
        typer.echo("backups    none recorded (cmohub vault backup, or the vault_maintenance DAG)")
    if s.last_checkpoint is None:
        typer.echo(f"audit      {s.audit_events} events; no checkpoint yet")
    else:
        cp = s.last_checkpoint
        behind = s.audit_events - cp.size
        typer.echo(
            f"audit      {s.audit_events} events; last checkpoint {cp.created_at}: "
            f"size {cp.size}, root {cp.root[:16]}..., key {cp.key_id} v{cp.key_version}"
            + (f" ({behind} events since)" if behind else "")
        )


# --- audit -----------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(
    witness: list[Path] = typer.Option(  # noqa: B008 - typer's declaration style
        [],
        "--witness",
        help="A checkpoint JSON kept outside the vault (e.g. from a published manifest).",
        exists=True,
        dir_okay=False,
    ),
) -> None:
    """Check the audit log: exit 0 intact, 1 tampered (names the event), 2 cannot verify.

    Example:  cmohub vault audit verify --witness manifest-checkpoint.json
    """

    try:
        witnesses = _read_witnesses(witness)
        with _open() as vault:
            result = vault.verify_audit(witnesses=witnesses)
    except (ConfigError, StoreUnavailable, VaultError, OSError, ValueError) as error:
        message = str(error) if isinstance(error, HubError) else type(error).__name__
        typer.echo(f"cannot verify: {message}", err=True)
        raise typer.Exit(2) from None
    if result.status == "intact":
        typer.echo(f"intact: {result.reason}")
        raise typer.Exit(0)
    if result.status == "tampered":
        where = f"first bad event: {result.first_bad_seq}; " if result.first_bad_seq else ""
        typer.echo(f"TAMPERED: {where}{result.reason}")
        raise typer.Exit(1)
    typer.echo(f"cannot verify: {result.reason}", err=True)
    raise typer.Exit(2)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Verify the log, then sign and store a checkpoint; prints it as JSON.

    Example:  cmohub vault audit checkpoint > checkpoint.json
    """
    with _open() as vault:
        checkpoint = vault.checkpoint()
    typer.echo(json.dumps(checkpoint.to_dict(), indent=2, sort_keys=True))


@audit_app.command("report")
def audit_report(
    since: str = typer.Option(..., "--since", help="First UTC day (YYYY-MM-DD)."),
    until: str | None = typer.Option(None, "--until", help="Day after the last (YYYY-MM-DD)."),
    fmt: Annotated[ReportFormat, typer.Option("--format", help="csv or html.")] = ReportFormat.CSV,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here, not stdout.")
    ] = None,
    actor: str | None = ACTOR_OPTION,
) -> None:
    """For privacy officers: reveals and refusals, rotations, withdrawals, merges,
    enrollment conflicts, and tokenizations per feed and day.

    Example:  cmohub vault audit report --since 2026-01-01 --format html -o audit.html
    """
    from cmohub.vault.report import build_report, render_csv, render_html

    try:
        first = date.fromisoformat(since)
        last = date.fromisoformat(until) if until else None
    except ValueError:
        raise VaultError("dates must be YYYY-MM-DD", code="VAULT_REPORT_INVALID") from None
    with _open() as vault:
        records = vault.audit_records(first, last, actor=_actor(actor))
        verification = vault.verify_audit()
    report = build_report(records, since=first, until=last, verification=verification)
    text = render_csv(report) if fmt is ReportFormat.CSV else render_html(report)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output} ({len(report.rows)} rows)")
