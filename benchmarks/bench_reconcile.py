"""Reconciliation engine choice: the same rules in DuckDB, pandas and Polars, side by side.

The three heaviest table rules — environmental monitoring over the action limit *during* a
step (an interval join of samples to steps), QC results against the specification version in
force on the test date (a range join to versions), operators without a certification covering
the step's start (an anti-join over validity windows) — run on the canonical tables of a
sandbox program in each engine, each in a fresh process (time and peak memory). The library
uses the engine with the best ratio; the full rule set then runs once in it.

    python -m benchmarks reconcile            # 10,000 patients
    python -m benchmarks reconcile 2000
"""

from __future__ import annotations

import tempfile

from benchmarks._harness import Measurement, measure_python, print_table, ratio

PREPARE = """
import json
from datetime import date
from pathlib import Path
import pyarrow.parquet as pq
from cmohub.contracts.store import load_product_catalog
from cmohub.reconcile.rules import specification_table
from cmohub.sandbox.faults import Fault
from cmohub.sandbox.program import ProgramConfig
from cmohub.sandbox.tables import build_journeys, canonical_tables
out = Path({out!r})
config = ProgramConfig(patients={n}, days={days}, seed=3, start=date(2026, 1, 5), faults=frozenset(Fault))
builder, journeys = build_journeys(config)
tables = canonical_tables(builder, journeys)
for name, table in tables.items():
    pq.write_table(table, out / f"{{name}}.parquet")
pq.write_table(specification_table(load_product_catalog()), out / "spec_limits.parquet")
print(json.dumps({{name: t.num_rows for name, t in tables.items()}}))
"""

LOAD = """
import json, time
from pathlib import Path
import pyarrow.parquet as pq
d = Path({out!r})
t = {{p.stem: pq.read_table(p) for p in d.glob("*.parquet")}}
"""

DUCKDB = (
    LOAD
    + """
from cmohub.contracts.store import load_product_catalog
from cmohub.reconcile import rules
con = rules.connect(t, load_product_catalog())
started = time.perf_counter()
n = len(rules.em_action_limit(con)) + len(rules.qc_out_of_spec(con)) + len(rules.operator_not_certified(con))
print(json.dumps({{"seconds": time.perf_counter() - started, "findings": n}}))
"""
)

PANDAS = (
    LOAD
    + """
import pandas as pd
started = time.perf_counter()
em = t["manufacturing.environmental_monitoring"].to_pandas()
steps = t["manufacturing.batch_step"].to_pandas()
batches = t["manufacturing.batch"].to_pandas()
qc = t["quality.qc_result"].to_pandas()
certs = t["master.certified_operator"].to_pandas()
spec = t["spec_limits"].to_pandas()
over = em[em["value"] > em["action_limit"]]
j = over.merge(steps, on="suite_id")
j = j[(j["started_at"] <= j["sampled_at"]) & (j["sampled_at"] <= j["ended_at"])]
j = j.merge(batches[["batch_id", "cmo"]], on=["batch_id", "cmo"])
n_em = len(j)
q = qc[qc["status"] == "final"].merge(batches[["batch_id", "product_code"]], on="batch_id")
q["day"] = q["tested_at"].dt.tz_convert("UTC").dt.date
q = q.merge(spec, on=["product_code", "test_code"])
q = q[(q["effective_from"] <= q["day"]) & (q["effective_to"].isna() | (q["day"] < q["effective_to"]))]
text = q["allowed_text"].notna()
bad_text = text & ~q.apply(lambda r: r["allowed_text"] is not None and str(r["value_text"]).strip().lower() in list(r["allowed_text"]), axis=1)
num = ~text
bad_num = num & (q["value"].isna() | (q["value"] < q["lower"].fillna(-float("inf"))) | (q["value"] > q["upper"].fillna(float("inf"))))
n_qc = int((bad_text | bad_num).sum())
s = steps.merge(batches[["batch_id", "cmo"]], on="batch_id")
s["day"] = s["started_at"].dt.tz_convert("UTC").dt.date
c = s.reset_index().merge(certs, on=["operator_id", "step_code", "cmo"], how="left")
c["ok"] = (c["certified_from"] <= c["day"]) & (c["day"] < c["certified_until"])
covered = c.groupby("index")["ok"].any()
n_cert = int((~covered).sum())
print(json.dumps({{"seconds": time.perf_counter() - started, "findings": n_em + n_qc + n_cert}}))
"""
)

POLARS = (
    LOAD
    + """
import polars as pl
started = time.perf_counter()
em = pl.from_arrow(t["manufacturing.environmental_monitoring"])
steps = pl.from_arrow(t["manufacturing.batch_step"])
batches = pl.from_arrow(t["manufacturing.batch"])
qc = pl.from_arrow(t["quality.qc_result"])
certs = pl.from_arrow(t["master.certified_operator"])
spec = pl.from_arrow(t["spec_limits"])
n_em = (em.filter(pl.col("value") > pl.col("action_limit")).join(steps, on="suite_id")
        .filter((pl.col("started_at") <= pl.col("sampled_at")) & (pl.col("sampled_at") <= pl.col("ended_at")))
        .join(batches.select("batch_id", "cmo"), on=["batch_id", "cmo"]).height)
q = (qc.filter(pl.col("status") == "final").join(batches.select("batch_id", "product_code"), on="batch_id")
     .with_columns(day=pl.col("tested_at").dt.convert_time_zone("UTC").dt.date())
     .join(spec, on=["product_code", "test_code"])
     .filter((pl.col("effective_from") <= pl.col("day")) & (pl.col("effective_to").is_null() | (pl.col("day") < pl.col("effective_to")))))
bad_text = pl.col("allowed_text").is_not_null() & ~pl.col("allowed_text").list.contains(pl.col("value_text").str.strip_chars().str.to_lowercase()).fill_null(False)
bad_num = pl.col("allowed_text").is_null() & (pl.col("value").is_null() | (pl.col("value") < pl.col("lower").fill_null(float("-inf"))) | (pl.col("value") > pl.col("upper").fill_null(float("inf"))))
n_qc = q.filter(bad_text | bad_num).height
s = (steps.join(batches.select("batch_id", "cmo"), on="batch_id").with_row_index("i")
     .with_columns(day=pl.col("started_at").dt.convert_time_zone("UTC").dt.date()))
c = s.join(certs, on=["operator_id", "step_code", "cmo"], how="left").with_columns(
    ok=((pl.col("certified_from") <= pl.col("day")) & (pl.col("day") < pl.col("certified_until"))).fill_null(False))
n_cert = c.group_by("i").agg(pl.col("ok").any()).filter(~pl.col("ok")).height
print(json.dumps({{"seconds": time.perf_counter() - started, "findings": n_em + n_qc + n_cert}}))
"""
)

ALL_RULES = (
    LOAD
    + """
from cmohub.contracts.store import load_product_catalog
from cmohub.reconcile.rules import evaluate_table_rules
t.pop("spec_limits")
started = time.perf_counter()
n = len(evaluate_table_rules(t, load_product_catalog()))
print(json.dumps({{"seconds": time.perf_counter() - started, "findings": n}}))
"""
)


def main(argv: list[str] | None = None) -> None:
    patients = int(argv[0]) if argv else 10_000
    print(f"reconciliation engines on a {patients:,}-patient program (3 heaviest rules)")
    with tempfile.TemporaryDirectory(prefix="cmohub-bench-reconcile-") as tmp:
        prep = measure_python(
            PREPARE.format(out=tmp, n=patients, days=max(1, patients // 27)), label="prepare"
        )
        rows_total = sum(int(v) for v in prep.result.values())
        print(f"canonical tables: {rows_total:,} rows in {len(prep.result)} tables")
        runs: dict[str, Measurement] = {
            "duckdb": measure_python(DUCKDB.format(out=tmp), label="duckdb"),
            "pandas": measure_python(PANDAS.format(out=tmp), label="pandas"),
            "polars": measure_python(POLARS.format(out=tmp), label="polars"),
        }
        everything = measure_python(ALL_RULES.format(out=tmp), label="all rules")
    base = runs["duckdb"].result["seconds"]
    print_table(
        ["engine", "rules s", "vs duckdb", "findings", "process peak MiB"],
        [
            [
                name,
                f"{m.result['seconds']:.3f}",
                ratio(m.result["seconds"], base),
                m.result["findings"],
                f"{m.peak_rss_mib:.0f}",
            ]
            for name, m in runs.items()
        ],
    )
    findings = {m.result["findings"] for m in runs.values()}
    print(f"engines agree on the findings: {'yes' if len(findings) == 1 else f'NO {findings}'}")
    print(
        f"all ten table rules in DuckDB: {everything.result['seconds']:.3f} s, "
        f"{everything.result['findings']} findings, peak {everything.peak_rss_mib:.0f} MiB"
    )
