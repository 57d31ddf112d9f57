"""Master data: sites, reagent lots, operator certifications and products (I/O).

Every mapping whose ``source.options.inbox`` is ``master`` reads one file of the master-data
folder (``CMOHUB_MASTER_DIR``; the embedded default uses the sandbox program's ``master/``).
Products come from the product catalog shipped in ``contracts/specifications/``. The nightly
reconciliation refreshes them first, so its rules judge operators, lots and sites against the
master data in force. Re-staging unchanged files is harmless: the latest version per key wins.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from cmohub.contracts.arrow import rows_to_table
from cmohub.contracts.store import load_contract, load_product_catalog
from cmohub.errors import ConfigError
from cmohub.lake import sha256_hex
from cmohub.mapping.readers import read_records
from cmohub.mapping.spec import compile_mapping
from cmohub.mapping.store import load_mappings
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.ledger import FeedCounts, RunLedger
from cmohub.pipelines.stage import FeedStager
from cmohub.vault import open_vault

MASTER_INBOX = "master"
PRODUCTS_FEED = "master-products"


def master_dir(context: RunContext) -> Path:
    return context.settings.master_root


def sync_master(context: RunContext, *, folder: Path | None = None) -> dict[str, Any]:
    """Stage every master-data file of ``folder`` through its mapping, and the product catalog."""
    root = folder or master_dir(context)
    if not root.is_dir():
        raise ConfigError(f"master-data folder {root} does not exist", code="MASTER_DIR_MISSING")
    ledger = RunLedger(task="master")
    staged: dict[str, int] = {}
    mappings = {
        name: spec
        for name, spec in sorted(load_mappings().items())
        if str(dict(spec.source.options).get("inbox", "")) == MASTER_INBOX
    }
    with open_vault(context.settings) as vault:
        for name, spec in mappings.items():
            pattern = str(dict(spec.source.options).get("file_pattern", ""))
            files = sorted(
                p for p in root.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, pattern)
            )
            stager = FeedStager(context, compile_mapping(spec), port=vault, ledger=ledger)
            for path in files:
                data = path.read_bytes()
                ledger.inputs.append({"feed": name, "file": path.name, "sha256": sha256_hex(data)})
                stager.stage(sha256_hex(data), read_records(spec.source, data))
                ledger.feed(name).files += 1
            staged[name] = stager.finish().counts.valid
    # Products: the catalog shipped with this version (contracts/specifications/).
    catalog = load_product_catalog()
    contract = load_contract("master.product")
    rows = [
        {
            **entry.product.model_dump(),
            "_feed": PRODUCTS_FEED,
            "_run_id": context.path_run_id,
            "_source_ref": f"{sha256_hex(code.encode())}#product={code}",
        }
        for code, entry in sorted(catalog.items())
    ]
    lake = context.lake
    target = (
        lake.staged_dir(
            "master.product", feed=PRODUCTS_FEED, day=context.day, run_id=context.path_run_id
        )
        / "part-catalog.parquet"
    )
    lake.write_parquet(target, rows_to_table(rows, contract))
    ledger.feed(PRODUCTS_FEED).add(FeedCounts(received=len(rows), valid=len(rows)))
    staged[PRODUCTS_FEED] = len(rows)
    ledger.save(context)
    return {"staged": staged}
