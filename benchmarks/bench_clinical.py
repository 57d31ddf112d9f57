"""Clinical ingest speed against the parsers alone, in one process (ratios, not seconds).

A clean sandbox program (default 1,500 patients) supplies the input:

* **FHIR** — searchset Bundles of 100 ServiceRequests, Specimens or Procedures each, with
  their Patients ``_include``d, as the sandbox server serves them. Reference: fhir.resources
  (R4B models) parsing each Bundle with ``Bundle.model_validate_json`` and nothing else.
  Measured: the hub's whole ingest of the same bundles — parse, check every resource with its
  model, resolve subjects, map, tokenize through the vault (SQLite, the enrollments loaded),
  validate against the contract and stage Parquet, raw payloads kept encrypted. Goal >= 50%.
* **HL7 v2** — the program's OML^O21 and ADT^A08 messages. Reference: python-hl7
  (``hl7.parse``) parsing each message alone. Measured: the hub's ingest of the same messages
  — split, parse what the mapping needs, de-duplicate, resolve subjects, map, tokenize,
  validate, stage. Twice: as the single-message files the site writes (each file registered
  and kept encrypted), and as batch files (FHS/BHS) of the same messages. Goal >= 25%.

Rates are resources (messages) per second; each side is the best of three runs.

    python -m benchmarks clinical            # 1,500 patients
    python -m benchmarks clinical 400        # another size
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from benchmarks._harness import print_table

FHIR_TYPES = ("ServiceRequest", "Specimen", "Procedure")
PAGE = 100
GOALS = {"FHIR": 0.50, "HL7 v2 files": 0.25, "HL7 v2 batches": 0.25}


def best_of(runs: int, work: Callable[[int], Any]) -> float:
    times = []
    for attempt in range(runs):
        started = time.perf_counter()
        work(attempt)
        times.append(time.perf_counter() - started)
    return min(times)


def fhir_bundles(program: Path) -> tuple[list[bytes], int]:
    """Searchset pages with included Patients, as the sandbox server renders them."""
    folder = program / "clinical" / "fhir"
    patients = {}
    for line in (folder / "Patient.ndjson").read_text().splitlines():
        resource = json.loads(line)
        patients[f"Patient/{resource['id']}"] = resource
    bundles = []
    count = 0
    for resource_type in FHIR_TYPES:
        lines = [
            json.loads(x) for x in (folder / f"{resource_type}.ndjson").read_text().splitlines()
        ]
        for start in range(0, len(lines), PAGE):
            chunk = lines[start : start + PAGE]
            count += len(chunk)
            included = {
                r["subject"]["reference"]: patients[r["subject"]["reference"]] for r in chunk
            }
            entries = [
                {
                    "fullUrl": f"http://fhir.bench.invalid/r4/{resource_type}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in chunk
            ] + [
                {
                    "fullUrl": f"http://fhir.bench.invalid/r4/{ref}",
                    "resource": p,
                    "search": {"mode": "include"},
                }
                for ref, p in included.items()
            ]
            bundle = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(lines),
                "entry": entries,
            }
            bundles.append(json.dumps(bundle, separators=(",", ":")).encode())
    return bundles, count


def hl7_messages(program: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((program / "clinical" / "hl7").rglob("*.hl7"))]


def prepared_home(program: Path, root: Path) -> Any:
    from cmohub.identity import Actor
    from cmohub.settings import load_settings
    from cmohub.vault import open_vault
    from cmohub.vault.enrollment import load_enrollments

    settings = load_settings(home=root, sandbox_dir=program)
    actor = Actor("bench", "service")
    with open_vault(settings, initialize=True) as vault:
        vault.init(actor=actor)
        lines = (program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
        vault.enroll_many(load_enrollments(lines), actor=actor)
    return settings


def hub_fhir(settings: Any, bundles: list[bytes], attempt: int) -> dict[str, Any]:
    from cmohub.pipelines import clinical
    from cmohub.pipelines.context import RunContext
    from cmohub.pipelines.ledger import RunLedger

    start = datetime(2026, 6, 1, tzinfo=UTC)
    context = RunContext("bench", f"bench-fhir-{attempt}", start, start, settings=settings)
    hub = clinical._Hub.open(context)
    try:
        intake = clinical.FhirIntake(hub)
        for number, data in enumerate(bundles, start=1):
            intake.add_payload(data, source=f"page {number}", kind="fhir-page", ndjson=False)
        ledger = RunLedger("bench")
        intake.stage(ledger)
        ledger.check()
    finally:
        hub.close()
    return ledger.summary()


def hub_hl7(settings: Any, payloads: list[bytes], attempt: int, label: str) -> dict[str, Any]:
    from cmohub.pipelines import clinical
    from cmohub.pipelines.context import RunContext
    from cmohub.pipelines.ledger import RunLedger
    from cmohub.sources.hl7 import Hl7Input

    start = datetime(2026, 6, 1, tzinfo=UTC)
    context = RunContext("bench", f"bench-{label}-{attempt}", start, start, settings=settings)
    hub = clinical._Hub.open(context)
    try:
        intake = clinical.Hl7Intake(hub)
        for number, data in enumerate(payloads, start=1):
            intake.add_input(Hl7Input(f"{label}-{attempt}-{number}.hl7", "file", data))
        ledger = RunLedger("bench")
        intake.stage(ledger)
        ledger.check()
    finally:
        hub.close()
    return ledger.summary()


def batches(messages: list[bytes], size: int = 100) -> list[bytes]:
    out = []
    for start in range(0, len(messages), size):
        part = messages[start : start + size]
        body = b"".join(m if m.endswith(b"\r") else m + b"\r" for m in part)
        out.append(
            b"FHS|^~\\&|SBX-EHR\rBHS|^~\\&|SBX-EHR\r" + body + f"BTS|{len(part)}\rFTS|1\r".encode()
        )
    return out


def main(argv: list[str]) -> None:
    import hl7
    from fhir.resources.R4B import get_fhir_model_class

    from cmohub.sandbox.generate import generate_program

    patients = int(argv[0]) if argv else 1500
    with tempfile.TemporaryDirectory(prefix="cmohub-bench-clinical-") as tmp:
        root = Path(tmp)
        program = root / "program"
        print(f"generating a clean program of {patients} patients ...", file=sys.stderr)
        generate_program(program, patients=patients, days=max(30, patients // 20), seed=5,
                         start=date(2026, 1, 5), faults=frozenset())  # fmt: skip
        bundles, resources = fhir_bundles(program)
        messages = hl7_messages(program)
        bundle_model = get_fhir_model_class("Bundle")
        parse_fhir = best_of(3, lambda _: [bundle_model.model_validate_json(b) for b in bundles])
        parse_hl7 = best_of(3, lambda _: [hl7.parse(m.decode()) for m in messages])

        # Every run reads the same input: each gets a fresh home, so nothing is a duplicate.
        homes = [prepared_home(program, root / f"home-{i}") for i in range(9)]
        ingest_fhir = best_of(3, lambda attempt: hub_fhir(homes[6 + attempt], bundles, attempt))
        ingest_files = best_of(
            3, lambda attempt: hub_hl7(homes[attempt], messages, attempt, "files")
        )
        grouped = batches(messages)
        ingest_batches = best_of(
            3, lambda attempt: hub_hl7(homes[3 + attempt], grouped, attempt, "batches")
        )
        again = hub_fhir(homes[6], bundles, 99)
        assert again["valid"] == 0 and again["duplicates"] == resources, again  # seen before

    rows = []
    for label, count, reference, ours in (
        ("FHIR", resources, parse_fhir, ingest_fhir),
        ("HL7 v2 files", len(messages), parse_hl7, ingest_files),
        ("HL7 v2 batches", len(messages), parse_hl7, ingest_batches),
    ):
        ratio = reference / ours
        rows.append(
            (
                label,
                count,
                f"{count / reference:,.0f}/s",
                f"{count / ours:,.0f}/s",
                f"{ratio:.0%}",
                f">= {GOALS[label]:.0%}",
                "ok" if ratio >= GOALS[label] else "below goal",
            )
        )
    print_table(("input", "records", "parser alone", "hub ingest", "ratio", "goal", ""), rows)


if __name__ == "__main__":
    main(sys.argv[1:])
