"""Several processes tokenizing the same new subjects at the same moment get one COI each.

The worker at the bottom of this file is also run by the PostgreSQL integration test
(``python tests/unit/test_vault_concurrency.py --worker ...``).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from cmohub.identity import Actor, SubjectIdentity, TokenizeRequest
from cmohub.sensitive import Sensitive
from cmohub.vault import FileKeyProvider, Vault

THIS_FILE = Path(__file__).resolve()
SYSTEM = "urn:cmohub:sandbox:mrn:A9990"


def request(i: int) -> TokenizeRequest:
    identity = SubjectIdentity(system=SYSTEM, value=Sensitive(f"CANARY-MRN-CONC-{i:06d}"))
    return TokenizeRequest(identity, f"ENR-{i % 3}")


def run_workers(
    url: str, keys: Path, go: Path, *, workers: int, count: int, batch: int
) -> list[dict[str, str]]:
    """Start ``workers`` processes, release them together, return each one's index -> COI."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(THIS_FILE),
                "--worker",
                url,
                str(keys),
                str(go),
                str(count),
                str(batch),
                str(seed),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(workers)
    ]
    time.sleep(1.0)  # let every worker import and open the vault before the start signal
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        assert "CANARY" not in err
        results.append(json.loads(out))
    return results


def check_one_coi_per_subject(vault: Vault, results: list[dict[str, str]], count: int) -> None:
    first = results[0]
    assert len(first) == count
    assert all(r == first for r in results)  # every process got the same COI for each subject
    assert len(set(first.values())) == count
    assert vault.status().cois_active == count  # and the vault holds exactly one row each
    records = vault.audit_records(date(2000, 1, 1), actor=Actor("test", "service"))
    tokenized = [json.loads(r.details) for r in records if r.event == "tokenize"]
    assert sum(t["new"] for t in tokenized) == count  # no batch believed it allocated twice
    audit = vault.verify_audit()
    assert audit.intact, audit.reason


def test_concurrent_processes_get_one_coi_per_subject_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/vault.sqlite"
    keys = FileKeyProvider(tmp_path / "keys")
    with Vault(url, keys) as vault:
        vault.init(actor=Actor("test", "service"))
        results = run_workers(
            url, tmp_path / "keys", tmp_path / "go", workers=4, count=1500, batch=100
        )
        check_one_coi_per_subject(vault, results, 1500)


def worker(args: list[str]) -> None:
    url, keys, go = args[:3]
    count, batch, seed = (int(a) for a in args[3:6])
    order = list(range(count))
    random.Random(seed).shuffle(order)
    actor = Actor(f"pipeline:worker-{seed}", "service", feed=f"worker-{seed}")
    with Vault.open(url, FileKeyProvider(Path(keys))) as vault:
        deadline = time.monotonic() + 120
        while not Path(go).exists():
            if time.monotonic() > deadline:
                raise SystemExit("no start signal")
            time.sleep(0.005)
        out: dict[str, str] = {}
        for start in range(0, count, batch):
            chunk = order[start : start + batch]
            cois = vault.tokenize_many([request(i) for i in chunk], actor=actor)
            out.update({str(i): str(c) for i, c in zip(chunk, cois, strict=True)})
    json.dump(dict(sorted(out.items())), sys.stdout)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2:8])
