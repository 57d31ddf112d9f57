"""Reconciliation rules over the canonical tables (pure: Arrow tables in, findings out).

Each rule joins canonical datasets by COI, batch, DIN or suite and returns one
:class:`RuleFinding` per thing a quality person must look at, with a stable rule code
(:mod:`cmohub.reconcile.catalog`), the keys that identify it and the evidence that triggered
it. Evidence holds record IDs, codes, times, values and limits — never a patient identifier
(the canonical tables hold none).

The rules read the data as ``docs/sandbox.md`` ("How the rules are meant to read the data")
describes; the joins run in an in-memory DuckDB database over the Arrow tables (no files, no
network), chosen by ``benchmarks/bench_reconcile.py``. Dates are compared as UTC dates.
Time-series rules (temperature excursions, logger gaps, custody gaps) live in
:mod:`cmohub.coldchain` and are combined by :mod:`cmohub.reconcile.nightly`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from cmohub.contracts.specifications import ProductCatalogEntry
from cmohub.reconcile.catalog import RULES, RuleCode, Severity

#: Canonical datasets the rules read, as DuckDB view names.
VIEWS = {
    "clinical.order": "orders",
    "clinical.collection": "collections",
    "clinical.infusion": "infusions",
    "manufacturing.batch": "batches",
    "manufacturing.batch_step": "steps",
    "manufacturing.material_consumption": "materials",
    "manufacturing.deviation": "deviations",
    "manufacturing.environmental_monitoring": "em",
    "quality.qc_result": "qc",
    "quality.release_decision": "releases",
    "master.certified_operator": "certifications",
}


@dataclass(frozen=True, slots=True)
class RuleFinding:
    """One exception: what rule, about what (keys), and why (evidence)."""

    rule: RuleCode
    key: tuple[tuple[str, Any], ...]
    description: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    coi: str | None = None
    batch_id: str | None = None
    shipment_id: str | None = None

    @property
    def severity(self) -> Severity:
        return RULES[self.rule].severity

    def key_dict(self) -> dict[str, Any]:
        return dict(self.key)

    def evidence_json(self) -> str:
        """The evidence with the finding's keys (``key``), as compact sorted JSON."""
        data = {"key": dict(self.key), **self.evidence}
        return json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))


def finding_key(**items: Any) -> tuple[tuple[str, Any], ...]:
    """The identifying keys of a finding, sorted, without the ones that are unknown."""
    return tuple(sorted((k, v) for k, v in items.items() if v is not None))


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    result = con.execute(sql)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def _amount(value: float) -> str:
    """Counts as people write them: 7,560,470 rather than 7.56047e+06."""
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:g}"


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


# --- rules -------------------------------------------------------------------------------------


def din_multiple_coi(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        SELECT din, list(DISTINCT coi ORDER BY coi) AS cois,
               list(collection_id ORDER BY collection_id) AS collections
        FROM collections GROUP BY din HAVING count(DISTINCT coi) > 1 ORDER BY din
        """,
    )
    return [
        RuleFinding(
            RuleCode.DIN_MULTIPLE_COI,
            finding_key(din=r["din"]),
            f"DIN {r['din']} is linked to {len(r['cois'])} COIs",
            {"din": r["din"], "cois": r["cois"], "collections": r["collections"]},
        )
        for r in rows
    ]


def batch_coi_mismatch(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        SELECT b.batch_id, b.coi, b.din, list(DISTINCT c.coi ORDER BY c.coi)
               FILTER (WHERE c.coi IS NOT NULL) AS collection_cois
        FROM batches b LEFT JOIN collections c ON c.din = b.din
        GROUP BY b.batch_id, b.coi, b.din
        HAVING NOT list_contains(coalesce(list(c.coi), []), b.coi)
        ORDER BY b.batch_id
        """,
    )
    return [
        RuleFinding(
            RuleCode.BATCH_COI_MISMATCH,
            finding_key(batch_id=r["batch_id"]),
            f"batch {r['batch_id']} names DIN {r['din']}, whose collection belongs to "
            + (", ".join(r["collection_cois"]) if r["collection_cois"] else "no known COI"),
            {"din": r["din"], "batch_coi": r["coi"], "collection_cois": r["collection_cois"]},
            coi=r["coi"],
            batch_id=r["batch_id"],
        )
        for r in rows
    ]


def reagent_expired(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        SELECT m.batch_id, m.step_no, m.material_code, m.lot_number, m.expiry_on,
               m.used_at, b.coi
        FROM materials m LEFT JOIN batches b USING (batch_id)
        WHERE m.expiry_on < CAST(timezone('UTC', m.used_at) AS DATE)
        ORDER BY m.batch_id, m.step_no, m.material_code, m.lot_number
        """,
    )
    return [
        RuleFinding(
            RuleCode.REAGENT_EXPIRED,
            finding_key(
                batch_id=r["batch_id"],
                step_no=r["step_no"],
                material_code=r["material_code"],
                lot_number=r["lot_number"],
            ),
            f"lot {r['lot_number']} of {r['material_code']} used in step {r['step_no']} on "
            f"{r['used_at']:%Y-%m-%d} had expired on {r['expiry_on']}",
            {"used_at": _iso(r["used_at"]), "expiry_on": _iso(r["expiry_on"])},
            coi=r["coi"],
            batch_id=r["batch_id"],
        )
        for r in rows
    ]


def operator_not_certified(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        SELECT s.batch_id, s.step_no, s.step_code, s.operator_id, s.started_at, b.coi, b.cmo
        FROM steps s JOIN batches b USING (batch_id)
        WHERE NOT EXISTS (
            SELECT 1 FROM certifications c
            WHERE c.operator_id = s.operator_id AND c.step_code = s.step_code
              AND c.cmo = b.cmo
              AND c.certified_from <= CAST(timezone('UTC', s.started_at) AS DATE)
              AND CAST(timezone('UTC', s.started_at) AS DATE) < c.certified_until)
        ORDER BY s.batch_id, s.step_no
        """,
    )
    return [
        RuleFinding(
            RuleCode.OPERATOR_NOT_CERTIFIED,
            finding_key(batch_id=r["batch_id"], step_no=r["step_no"], operator_id=r["operator_id"]),
            f"operator {r['operator_id']} held no certification for {r['step_code']} when "
            f"step {r['step_no']} started on {r['started_at']:%Y-%m-%d}",
            {"step_code": r["step_code"], "started_at": _iso(r["started_at"]), "cmo": r["cmo"]},
            coi=r["coi"],
            batch_id=r["batch_id"],
        )
        for r in rows
    ]


def em_action_limit(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        SELECT s.batch_id, s.step_no, s.step_code, e.suite_id, e.sample_id, e.kind, e.value,
               e.unit, e.action_limit, e.sampled_at, b.coi
        FROM em e
        JOIN steps s ON s.suite_id = e.suite_id
                    AND s.started_at <= e.sampled_at AND e.sampled_at <= s.ended_at
        JOIN batches b ON b.batch_id = s.batch_id AND b.cmo = e.cmo
        WHERE e.value > e.action_limit
        ORDER BY s.batch_id, s.step_no, e.sample_id
        """,
    )
    return [
        RuleFinding(
            RuleCode.EM_ACTION_LIMIT,
            finding_key(
                batch_id=r["batch_id"],
                step_no=r["step_no"],
                suite_id=r["suite_id"],
                sample_id=r["sample_id"],
            ),
            f"{r['kind']} {_amount(r['value'])} {r['unit']} in {r['suite_id']} (action limit "
            f"{_amount(r['action_limit'])}) while step {r['step_no']} ({r['step_code']}) ran there",
            {
                "kind": r["kind"],
                "value": r["value"],
                "unit": r["unit"],
                "action_limit": r["action_limit"],
                "sampled_at": _iso(r["sampled_at"]),
            },
            coi=r["coi"],
            batch_id=r["batch_id"],
        )
        for r in rows
    ]


def deviation_open_on_released(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        SELECT d.batch_id, d.deviation_id, d.classification, d.category, d.opened_at,
               r.decided_at, r.coi
        FROM deviations d JOIN releases r USING (batch_id)
        WHERE r.decision = 'released' AND d.patient_impact AND d.status = 'open'
        ORDER BY d.batch_id, d.deviation_id
        """,
    )
    return [
        RuleFinding(
            RuleCode.DEVIATION_OPEN_ON_RELEASED,
            finding_key(batch_id=r["batch_id"], deviation_id=r["deviation_id"]),
            f"{r['classification']} deviation {r['deviation_id']} ({r['category']}) with "
            f"patient impact is open on released batch {r['batch_id']}",
            {
                "opened_at": _iso(r["opened_at"]),
                "released_at": _iso(r["decided_at"]),
                "classification": r["classification"],
            },
            coi=r["coi"],
            batch_id=r["batch_id"],
        )
        for r in rows
    ]


def qc_out_of_spec(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        WITH judged AS (
            SELECT q.batch_id, q.result_id, q.test_code, q.value, q.value_text, q.unit,
                   q.tested_at, b.coi, l.version, l.lower, l.upper, l.allowed_text
            FROM qc q
            JOIN batches b USING (batch_id)
            JOIN spec_limits l ON l.product_code = b.product_code AND l.test_code = q.test_code
             AND l.effective_from <= CAST(timezone('UTC', q.tested_at) AS DATE)
             AND (l.effective_to IS NULL
                  OR CAST(timezone('UTC', q.tested_at) AS DATE) < l.effective_to)
            WHERE q.status = 'final')
        SELECT * FROM judged
        WHERE (allowed_text IS NOT NULL
               AND (value_text IS NULL
                    OR NOT list_contains(allowed_text, lower(trim(value_text)))))
           OR (allowed_text IS NULL
               AND (value IS NULL OR value < coalesce(lower, -'infinity'::DOUBLE)
                    OR value > coalesce(upper, 'infinity'::DOUBLE)))
        ORDER BY batch_id, test_code, result_id
        """,
    )
    findings = []
    for r in rows:
        if r["allowed_text"] is not None:
            limit = "one of " + ", ".join(r["allowed_text"])
            shown = r["value_text"]
        else:
            bounds = [
                f"≥ {r['lower']:g}" if r["lower"] is not None else "",
                f"≤ {r['upper']:g}" if r["upper"] is not None else "",
            ]
            limit = " and ".join(b for b in bounds if b)
            shown = f"{r['value']:g} {r['unit'] or ''}".strip()
        findings.append(
            RuleFinding(
                RuleCode.QC_OUT_OF_SPEC,
                finding_key(
                    batch_id=r["batch_id"], test_code=r["test_code"], result_id=r["result_id"]
                ),
                f"{r['test_code']} = {shown} on {r['tested_at']:%Y-%m-%d} is outside "
                f"specification v{r['version']} ({limit})",
                {
                    "value": r["value"],
                    "value_text": r["value_text"],
                    "unit": r["unit"],
                    "spec_version": r["version"],
                    "lower": r["lower"],
                    "upper": r["upper"],
                    "allowed_text": r["allowed_text"],
                    "tested_at": _iso(r["tested_at"]),
                },
                coi=r["coi"],
                batch_id=r["batch_id"],
            )
        )
    return findings


def release_before_results(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        SELECT r.batch_id, r.coi, r.decided_at, l.version, l.test_code,
               min(q.tested_at) FILTER (WHERE q.status = 'final') AS first_final_at
        FROM releases r
        JOIN batches b USING (batch_id)
        JOIN spec_limits l ON l.product_code = b.product_code AND l.version = r.spec_version
        LEFT JOIN qc q ON q.batch_id = r.batch_id AND q.test_code = l.test_code
        WHERE r.decision = 'released' AND l.required
        GROUP BY r.batch_id, r.coi, r.decided_at, l.version, l.test_code
        HAVING first_final_at IS NULL OR first_final_at > r.decided_at
        ORDER BY r.batch_id, l.test_code
        """,
    )
    return [
        RuleFinding(
            RuleCode.RELEASE_BEFORE_RESULTS,
            finding_key(batch_id=r["batch_id"], test_code=r["test_code"]),
            f"batch {r['batch_id']} was released on {r['decided_at']:%Y-%m-%d %H:%M} UTC before "
            f"its required {r['test_code']} result"
            + (
                f" (final at {r['first_final_at']:%Y-%m-%d %H:%M} UTC)"
                if r["first_final_at"]
                else ""
            ),
            {
                "released_at": _iso(r["decided_at"]),
                "result_at": _iso(r["first_final_at"]),
                "spec_version": r["version"],
            },
            coi=r["coi"],
            batch_id=r["batch_id"],
        )
        for r in rows
    ]


def infusion_before_release(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        SELECT i.coi, i.batch_id, i.infused_at, r.decided_at
        FROM infusions i JOIN releases r ON r.batch_id = i.batch_id AND r.decision = 'released'
        WHERE i.status = 'completed' AND i.infused_at < r.decided_at
        ORDER BY i.coi, i.batch_id
        """,
    )
    return [
        RuleFinding(
            RuleCode.INFUSION_BEFORE_RELEASE,
            finding_key(coi=r["coi"], batch_id=r["batch_id"]),
            f"batch {r['batch_id']} was infused {r['infused_at']:%Y-%m-%d %H:%M} UTC, before its "
            f"release at {r['decided_at']:%Y-%m-%d %H:%M} UTC",
            {"infused_at": _iso(r["infused_at"]), "released_at": _iso(r["decided_at"])},
            coi=r["coi"],
            batch_id=r["batch_id"],
        )
        for r in rows
    ]


def vein_to_vein_over_target(con: duckdb.DuckDBPyConnection) -> list[RuleFinding]:
    rows = _rows(
        con,
        """
        SELECT i.coi, i.batch_id, min(c.collected_at) AS collected_at, i.infused_at,
               p.vein_to_vein_target_days AS target_days,
               epoch(i.infused_at - min(c.collected_at)) / 86400.0 AS days
        FROM infusions i
        JOIN collections c ON c.coi = i.coi
        JOIN batches b ON b.batch_id = i.batch_id
        JOIN products p ON p.product_code = b.product_code
        WHERE i.status = 'completed'
        GROUP BY i.coi, i.batch_id, i.infused_at, p.vein_to_vein_target_days
        HAVING days > p.vein_to_vein_target_days
        ORDER BY i.coi
        """,
    )
    return [
        RuleFinding(
            RuleCode.VEIN_TO_VEIN_OVER_TARGET,
            finding_key(coi=r["coi"]),
            f"vein-to-vein time {r['days']:.1f} days exceeds the target of {r['target_days']} days",
            {
                "collected_at": _iso(r["collected_at"]),
                "infused_at": _iso(r["infused_at"]),
                "days": round(r["days"], 2),
                "target_days": r["target_days"],
            },
            coi=r["coi"],
            batch_id=r["batch_id"],
        )
        for r in rows
    ]


TABLE_RULES: tuple[Callable[[duckdb.DuckDBPyConnection], list[RuleFinding]], ...] = (
    din_multiple_coi,
    batch_coi_mismatch,
    reagent_expired,
    operator_not_certified,
    em_action_limit,
    deviation_open_on_released,
    qc_out_of_spec,
    release_before_results,
    infusion_before_release,
    vein_to_vein_over_target,
)


# --- inputs ------------------------------------------------------------------------------------


def specification_table(catalog: Mapping[str, ProductCatalogEntry]) -> pa.Table:
    """Every limit of every specification version, one row per (product, version, test)."""
    rows: list[dict[str, Any]] = []
    for code in sorted(catalog):
        for spec in catalog[code].specifications:
            for limit in spec.limits:
                rows.append(
                    {
                        "product_code": code,
                        "version": spec.version,
                        "effective_from": spec.effective_from,
                        "effective_to": spec.effective_to,
                        "test_code": limit.test_code,
                        "unit": limit.unit,
                        "lower": limit.lower,
                        "upper": limit.upper,
                        "allowed_text": (
                            [t.strip().lower() for t in limit.allowed_text]
                            if limit.allowed_text is not None
                            else None
                        ),
                        "required": limit.required,
                    }
                )
    schema = pa.schema(
        [
            ("product_code", pa.string()),
            ("version", pa.int64()),
            ("effective_from", pa.date32()),
            ("effective_to", pa.date32()),
            ("test_code", pa.string()),
            ("unit", pa.string()),
            ("lower", pa.float64()),
            ("upper", pa.float64()),
            ("allowed_text", pa.list_(pa.string())),
            ("required", pa.bool_()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def product_table(catalog: Mapping[str, ProductCatalogEntry]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "product_code": code,
                "vein_to_vein_target_days": entry.product.vein_to_vein_target_days,
                "excursion_budget_minutes": entry.product.excursion_budget_minutes,
            }
            for code, entry in sorted(catalog.items())
        ],
        schema=pa.schema(
            [
                ("product_code", pa.string()),
                ("vein_to_vein_target_days", pa.int64()),
                ("excursion_budget_minutes", pa.int64()),
            ]
        ),
    )


def connect(
    tables: Mapping[str, pa.Table], catalog: Mapping[str, ProductCatalogEntry]
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database with every canonical table registered as a view."""
    con = duckdb.connect(database=":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for dataset, view in VIEWS.items():
        if dataset not in tables:
            raise KeyError(f"reconciliation needs the {dataset} table")
        con.register(view, tables[dataset])
    con.register("spec_limits", specification_table(catalog))
    con.register("products", product_table(catalog))
    return con


def evaluate_table_rules(
    tables: Mapping[str, pa.Table], catalog: Mapping[str, ProductCatalogEntry]
) -> list[RuleFinding]:
    """Every finding of the table rules, in rule order then key order."""
    con = connect(tables, catalog)
    try:
        findings: list[RuleFinding] = []
        for rule in TABLE_RULES:
            findings.extend(rule(con))
        return findings
    finally:
        con.close()
