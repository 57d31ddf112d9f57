"""``cmohub demo``: the whole hub on the embedded default, in one command.

Stages, in order (each a function of the :class:`DemoContext`, listed in :data:`STAGES`):

1. ``sandbox``  — generate a synthetic program (40 patients, every fault planted);
2. ``setup``    — a fresh hub home: vault and its keys, the sponsor's OpenPGP key, the CMOs'
                  deliveries signed and encrypted into their inbox folders;
3. ``servers``  — the sandbox FHIR, EPCIS and courier servers on loopback, as Airflow connections;
4. ``airflow``  — every DAG once through ``dag.test()`` on SQLite (child process: Airflow reads
                  its configuration when imported);
5. ``results``  — records per stage, exceptions per rule, precision and recall against
                  ``truth.json``, the release verified, and a canary scan of everything left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Annotated, Any

import typer

from cmohub.commands.sandbox import print_summary, run_generation
from cmohub.sandbox.generate import GenerationSummary

DEFAULT_OUT = Path(".cmohub/demo")
MARKER = ".cmohub-demo"
INGEST_DAGS = ("clinical_sync", "logistics_sync")
LAST_DAGS = ("vault_maintenance", "nightly_reconciliation")
REPO_DAGS = Path(__file__).resolve().parents[3] / "dags"


@dataclass
class DemoContext:
    out: Path
    patients: int
    seed: int
    sandbox: GenerationSummary | None = None
    notes: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stack: ExitStack = field(default_factory=ExitStack)
    results: dict[str, Any] = field(default_factory=dict)
    failed: bool = False

    @property
    def sandbox_dir(self) -> Path:
        return self.out / "sandbox"

    @property
    def home(self) -> Path:
        return self.out / "home"

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    def truth(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.sandbox_dir / "truth.json").read_text())
        return data


def _fresh(out: Path) -> None:
    """Start from an empty demo folder; never delete a folder the demo did not make."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise typer.BadParameter(
                f"{out} is not empty and is not a demo folder", param_hint="--out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by cmohub demo; deleted by the next demo run\n")


def stage_sandbox(ctx: DemoContext) -> None:
    """Generate the synthetic program every later stage reads."""
    days = max(10, ctx.patients // 2)
    ctx.sandbox = run_generation(ctx.sandbox_dir, patients=ctx.patients, days=days, seed=ctx.seed)
    print_summary(ctx.sandbox)
    ctx.notes.append(f"sandbox program   {ctx.sandbox_dir}  (planted faults: truth.json)")


def stage_setup(ctx: DemoContext) -> None:
    """A fresh hub home: vault, keys, and the CMOs' signed and encrypted deliveries."""
    from cmohub.crypto.keyring import Keyring
    from cmohub.identity import Actor
    from cmohub.sandbox.deliver import deliver_program
    from cmohub.settings import load_settings
    from cmohub.vault import open_vault

    ctx.env.update(
        {
            "CMOHUB_HOME": str(ctx.home.absolute()),
            "CMOHUB_SANDBOX_DIR": str(ctx.sandbox_dir.absolute()),
            "GX_ANALYTICS_ENABLED": "false",
        }
    )
    os.environ.update(ctx.env)
    settings = load_settings()
    with open_vault(settings, initialize=True) as vault:
        vault.init(actor=Actor(os.environ.get("USER") or "demo", "data_engineer"))
    keyring = Keyring.for_settings(settings)
    hub = keyring.ensure_hub_key()
    delivered = deliver_program(ctx.sandbox_dir, keyring=keyring, inbox_root=ctx.home / "inbox")
    files = sum(delivered.files.values())
    typer.echo(f"  vault initialized: {settings.vault_database_url.removeprefix('sqlite:///')}")
    typer.echo(f"  sponsor OpenPGP key {hub.fingerprint}")
    typer.echo(
        f"  CMO deliveries: {files} files signed by each CMO's key and encrypted to the sponsor, "
        f"in {ctx.home / 'inbox'}"
    )


def stage_servers(ctx: DemoContext) -> None:
    """The sandbox sources on loopback, declared to Airflow as connections."""
    from cmohub.airflow.connections import connection_env
    from cmohub.sandbox.servers.base import FaultPlan
    from cmohub.sandbox.servers.courier import CourierServer
    from cmohub.sandbox.servers.epcis import EpcisServer
    from cmohub.sandbox.servers.fhir import FhirSandboxServer

    # The sources misbehave now and then (rate limits, outages): the connectors retry.
    fhir = FhirSandboxServer(
        ctx.sandbox_dir, faults=FaultPlan(rate_limit_every=9, retry_after_seconds=1)
    )
    epcis = EpcisServer(ctx.sandbox_dir, faults=FaultPlan(unavailable_every=11))
    courier = CourierServer(ctx.sandbox_dir, faults=FaultPlan(unavailable_every=13))
    for conn_id, server, extra in (
        ("cmohub_fhir", fhir, {"base_path": "/r4", "fhir_version": "R4"}),
        ("cmohub_epcis", epcis, {}),
        (
            "cmohub_courier",
            courier,
            {"login": courier.client_id, "password": courier.client_secret},
        ),
    ):
        ctx.stack.enter_context(server.running())
        host, port = server.base_url.removeprefix("http://").split(":")
        name, value = connection_env(conn_id, scheme="http", host=host, port=int(port), **extra)
        ctx.env[name] = value
        typer.echo(f"  {conn_id:<15} {server.base_url}{extra.get('base_path', '')}")
    ctx.results["servers"] = {"fhir": fhir, "epcis": epcis, "courier": courier}


def _as_of(ctx: DemoContext) -> datetime:
    """The instant the demo runs at: the day after the program's last event, 03:00 UTC."""
    from cmohub.sandbox.program import ProgramConfig

    generator = ctx.truth()["generator"]
    config = ProgramConfig(
        patients=generator["patients"],
        days=generator["days"],
        seed=generator["seed"],
        start=datetime.fromisoformat(generator["start"]).date(),
    )
    return datetime.combine(config.last_day + timedelta(days=1), clock(3), tzinfo=UTC)


def airflow_env(ctx: DemoContext) -> dict[str, str]:
    """The environment Airflow runs in: its home under the hub's, our DAGs, the connections."""
    airflow_home = ctx.home / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **ctx.env,
        "AIRFLOW_HOME": str(airflow_home.absolute()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }


def prepare_embedded(ctx: DemoContext) -> None:
    """A fresh embedded default: sandbox program, vault, keys, deliveries, loopback sources."""
    _fresh(ctx.out)
    for name, stage in STAGES[:3]:
        typer.echo(f"== {name}")
        stage(ctx)


def stage_airflow(ctx: DemoContext) -> None:
    """Every DAG once through dag.test(), on SQLite, in a child process."""
    from cmohub.airflow.demo import RESULT
    from cmohub.sources.delivery import load_cmo_feeds

    env = airflow_env(ctx)
    airflow_home = Path(env["AIRFLOW_HOME"])
    at = _as_of(ctx)
    dag_ids = [*INGEST_DAGS, *sorted(load_cmo_feeds()), *LAST_DAGS]
    log = ctx.home / "logs" / "airflow-demo.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    typer.echo(f"  logical date {at.isoformat()}; Airflow home {airflow_home}; log {log}")
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as handle:
        child = subprocess.Popen(  # noqa: S603 - our own module, with arguments we built
            [sys.executable, "-m", "cmohub.airflow.demo", "--at", at.isoformat(), *dag_ids],
            stdout=subprocess.PIPE,
            stderr=handle,
            env=env,
            text=True,
        )
        assert child.stdout is not None
        for line in child.stdout:
            if not line.startswith(RESULT):
                handle.write(line)
                continue
            result = json.loads(line.removeprefix(RESULT))
            ctx.results.setdefault("dags", []).append(result)
            tasks = result.get("tasks", {})
            failed = [t for t, r in tasks.items() if r["state"] != "success"]
            typer.echo(
                f"  {result['dag_id']:<26} {result['state']:<8} {len(tasks)} tasks"
                + (f"  failed: {', '.join(failed)}" if failed else "")
                + f"  ({time.monotonic() - started:.0f}s)"
            )
        code = child.wait()
    if code != 0:
        ctx.failed = True
        typer.echo(f"  a DAG failed: see {log}", err=True)
    ctx.notes.append(f"Airflow task logs {airflow_home / 'logs'}")


def _ledgers(lake: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((lake / "runs").glob("*/*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "counts" in data and "task" in data:
            out.append(data)
    return out


def stage_results(ctx: DemoContext) -> None:
    """Records per stage, exceptions per rule, precision and recall, verification, canaries."""
    import pyarrow.parquet as pq

    from cmohub.privacy import canary_tokens, scan_paths
    from cmohub.publish.release import verify_release
    from cmohub.publish.signing import check_checkpoint, hub_verifier, latest_release
    from cmohub.reconcile.scoring import score
    from cmohub.settings import load_settings

    totals: dict[str, list[int]] = {}
    for ledger in _ledgers(ctx.lake):
        for feed, c in ledger["counts"].items():
            row = totals.setdefault(feed, [0, 0, 0, 0])
            for i, key in enumerate(("received", "valid", "quarantined", "duplicates")):
                row[i] += int(c.get(key, 0))
    typer.echo(f"  {'feed':<44} {'received':>8} {'staged':>7} {'quarant.':>8} {'dupl.':>6}")
    for feed, (received, valid, quarantined, duplicates) in sorted(totals.items()):
        typer.echo(f"  {feed:<44} {received:>8} {valid:>7} {quarantined:>8} {duplicates:>6}")
    release = latest_release(ctx.lake / "published")
    exceptions = pq.read_table(release / "datasets" / "exceptions.parquet").to_pylist()
    truth = ctx.truth()
    result = score(exceptions, truth["faults"])
    typer.echo(f"  {'rule':<28} {'raised':>6} {'planted':>7} {'caught':>6}")
    for rule, tally in sorted(result.by_rule.items()):
        typer.echo(f"  {rule:<28} {tally.raised:>6} {tally.planted:>7} {tally.matched:>6}")
    typer.echo(
        f"  precision {result.precision:.2f}  recall {result.recall:.2f}  "
        f"({result.raised} exceptions, {result.planted} planted faults, {result.matched} matched)"
    )
    for missed in result.missed:
        typer.echo(f"  MISSED {missed['rule']} {missed['key']}")
    for extra in result.unexpected:
        typer.echo(f"  UNEXPECTED {extra['rule']}: {extra['description']}")
    verified = verify_release(
        release,
        hub_verifier(load_settings(), key_file=None, pinned=None),
        checkpoint_check=check_checkpoint,
    )
    typer.echo(
        f"  release {release.name}: "
        + (
            f"verified ({verified.checked_files} files, signature, audit checkpoint)"
            if verified.ok
            else f"VERIFY FAILED {verified.failure}"
        )
    )
    tokens = canary_tokens(ctx.sandbox_dir / "truth.json")
    scanned, hits = scan_paths([ctx.home], tokens)
    typer.echo(
        f"  canary scan: {scanned} files under {ctx.home}, {len(hits)} canary identifiers found"
    )
    for hit in hits[:10]:
        typer.echo(f"  LEAK {hit}")
    ctx.failed |= not verified.ok or bool(hits) or result.precision < 1.0 or result.recall < 1.0
    faulty = next((e["coi"] for e in exceptions if e.get("coi")), None)
    home = f"CMOHUB_HOME={ctx.home}"
    ctx.notes += [
        f"release           {release}",
        f"report            {release / 'report' / 'index.html'}",
        f"verify it         {home} cmohub publish verify {release}",
    ]
    if faulty:
        ctx.notes.append(f"a COI's dossier   {home} cmohub coi report {faulty} --out dossier.html")
    ctx.notes.append(f"audit the vault   {home} cmohub vault audit verify")
    backups = sorted((ctx.home / "backups").glob("vault-*.sqlite"))
    if backups:  # vault_maintenance's, checked when it was taken
        ctx.notes.append(f"vault backup      {backups[-1]}  (the keys are not in it)")


Stage = Callable[[DemoContext], None]
#: The demo's stages, in order.
STAGES: list[tuple[str, Stage]] = [
    ("sandbox", stage_sandbox),
    ("setup", stage_setup),
    ("sandbox servers on loopback", stage_servers),
    ("airflow: every DAG once (dag.test, SQLite)", stage_airflow),
    ("results", stage_results),
]


@contextmanager
def _closing(ctx: DemoContext) -> Iterator[DemoContext]:
    with ctx.stack:
        yield ctx


def demo(
    *,
    patients: Annotated[int, typer.Option("--patients", "-n", min=1, help="Patients.")] = 40,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Demo folder (recreated).")
    ] = DEFAULT_OUT,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sandbox program.")] = 1,
) -> None:
    """Run the whole hub on a synthetic program and say where everything is.

    Example:  cmohub demo --patients 40 --out .cmohub/demo
    """
    _fresh(out)
    ctx = DemoContext(out=out.absolute(), patients=patients, seed=seed)
    started = time.monotonic()
    with _closing(ctx):
        for name, stage in STAGES:
            typer.echo(f"== {name}")
            stage(ctx)
            if ctx.failed and name.startswith("airflow"):
                break
    typer.echo("== where things are")
    for note in ctx.notes:
        typer.echo(f"  {note}")
    typer.echo(f"demo {'FAILED' if ctx.failed else 'done'} in {time.monotonic() - started:.0f}s")
    if ctx.failed:
        raise typer.Exit(1)
