"""Validate a table against its contract: report, valid rows, quarantined rows (pure).

:func:`validate_table` is what pipelines and ``cmohub contracts validate`` call::

    outcome = validate_table(table, contract, run_id=run_id, feed="cmo-acme-batches", as_of=t)
    outcome.report        # ValidationReport (counts, per-check results, findings; no values)
    outcome.valid         # pyarrow.Table with the contract's Arrow schema, ready for Parquet
    outcome.quarantined   # QuarantineEntry per rejected row: reason codes + source reference

Order of work:

1. columns the contract lacks are dropped (finding ``CONTRACT_COLUMN_UNEXPECTED``: an unknown
   column may carry identifiers, so it is never staged); missing ones are added empty
   (finding ``CONTRACT_COLUMN_MISSING``);
2. values are read as their logical types (``CONTRACT_TYPE`` for those that cannot be;
   ``float32`` is widened to ``float64`` and integers are checked as ``float64`` so that GX's
   range checks stay vectorized);
3. rows identical to an earlier row (apart from lineage) are **duplicates**: counted, not
   staged, not quarantined; rows that share a primary key but differ are quarantined
   (``CONTRACT_KEY_CONFLICT``);
4. the Great Expectations suite runs once over the rest (:mod:`cmohub.contracts.gx`);
5. every row failing an ``error`` row-level check is quarantined with all its reasons;
   table-level checks (row count, freshness, tolerated shares) become findings.

Received = valid + quarantined + duplicates, including records rejected before validation
(mapping issues) that the caller passes as ``upstream``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from cmohub.contracts import gx
from cmohub.contracts.arrow import to_arrow_schema
from cmohub.contracts.checks import PRIMARY_KEY_CHECK, Check, compile_checks
from cmohub.contracts.model import Contract, LogicalType, PropertySpec, RuleKind
from cmohub.contracts.model import Severity as Sev
from cmohub.contracts.report import (
    CheckResult,
    Counts,
    Finding,
    QuarantineEntry,
    Reason,
    SourceRef,
    ValidationReport,
    count_reasons,
)
from cmohub.errors import ContractError

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
_TZ_SUFFIX = "::as_received"
HUB = "cmohub"


@dataclass(frozen=True, slots=True)
class ValidationOutcome:
    report: ValidationReport
    valid: pa.Table
    quarantined: tuple[QuarantineEntry, ...]


@dataclass(slots=True)
class _Column:
    checked: pd.Series  # what GX sees
    staged: pd.Series  # what is written (typed)
    type_failed: np.ndarray | None  # rows whose value is not of the logical type
    as_received: pd.Series | None = None  # timestamps not already tz-aware: for the tz check


# --- reading values as their logical types ---------------------------------------------------


def _present(series: pd.Series) -> np.ndarray:
    return series.notna().to_numpy(dtype=bool)


def _coerce_number(series: pd.Series, *, integer: bool) -> _Column:
    if pd.api.types.is_bool_dtype(series.dtype):
        numbers = pd.Series(np.nan, index=series.index, dtype="float64")
    elif pd.api.types.is_numeric_dtype(series.dtype):
        numbers = series.astype("float64")
    else:
        numbers = pd.to_numeric(series, errors="coerce").astype("float64")
    values = numbers.to_numpy()
    bad = _present(series) & ~np.isfinite(values)
    if integer:
        with np.errstate(invalid="ignore"):
            bad |= np.isfinite(values) & (np.floor(values) != values)
    checked = numbers.where(~bad) if bad.any() else numbers
    staged = checked.astype("Int64") if integer else checked
    return _Column(checked=checked, staged=staged, type_failed=bad if bad.any() else None)


def _coerce_boolean(series: pd.Series) -> _Column:
    if pd.api.types.is_bool_dtype(series.dtype):
        typed = series.astype("boolean")
        return _Column(checked=typed, staged=typed, type_failed=None)

    def read(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        return None

    present = _present(series)
    typed = series.map(read, na_action="ignore").astype("boolean")
    bad = present & typed.isna().to_numpy(dtype=bool)
    return _Column(checked=typed, staged=typed, type_failed=bad if bad.any() else None)


def _coerce_timestamp(series: pd.Series, prop: PropertySpec) -> _Column:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        typed = series.dt.tz_convert("UTC")
        return _Column(checked=typed, staged=typed, type_failed=None)
    if pd.api.types.is_datetime64_dtype(series.dtype):
        # Naive datetimes: the timezone check rejects them; keep a typed copy for the rest.
        typed = series.dt.tz_localize("UTC")
        return _Column(checked=typed, staged=typed, type_failed=None, as_received=series)
    text = series.map(lambda v: v.isoformat() if isinstance(v, datetime) else v, na_action="ignore")
    typed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    bad = _present(series) & typed.isna().to_numpy(dtype=bool)
    if prop.timezone is False:
        typed = typed.dt.tz_localize(None)
    return _Column(
        checked=typed, staged=typed, type_failed=bad if bad.any() else None, as_received=series
    )


def _coerce_date(series: pd.Series) -> _Column:
    present = _present(series)
    typed = pd.to_datetime(
        series.map(lambda v: v.isoformat() if hasattr(v, "isoformat") else v, na_action="ignore"),
        format="ISO8601",
        errors="coerce",
    )
    if isinstance(typed.dtype, pd.DatetimeTZDtype):
        typed = typed.dt.tz_localize(None)
    bad = present & typed.isna().to_numpy(dtype=bool)
    staged = typed.dt.date.astype(object).where(typed.notna(), None)
    return _Column(checked=typed, staged=staged, type_failed=bad if bad.any() else None)


def _coerce_string(series: pd.Series) -> _Column:
    if pd.api.types.is_string_dtype(series.dtype) and not pd.api.types.is_object_dtype(
        series.dtype
    ):
        return _Column(checked=series, staged=series, type_failed=None)
    typed = series.map(str, na_action="ignore").astype("str")
    return _Column(checked=typed, staged=typed, type_failed=None)


def coerce_column(series: pd.Series, prop: PropertySpec) -> _Column:
    """Read ``series`` as ``prop``'s logical type; remember which values could not be read."""
    kind = prop.logical_type
    if kind is LogicalType.NUMBER:
        return _coerce_number(series, integer=False)
    if kind is LogicalType.INTEGER:
        return _coerce_number(series, integer=True)
    if kind is LogicalType.BOOLEAN:
        return _coerce_boolean(series)
    if kind is LogicalType.TIMESTAMP:
        return _coerce_timestamp(series, prop)
    if kind is LogicalType.DATE:
        return _coerce_date(series)
    if kind is LogicalType.OBJECT:
        return _Column(checked=series, staged=series, type_failed=None)
    return _coerce_string(series)


# --- the run ---------------------------------------------------------------------------------


def _to_frame(data: pa.Table | pd.DataFrame) -> pd.DataFrame:
    if isinstance(data, pa.Table):
        frame: pd.DataFrame = data.to_pandas()
        return frame
    return data.reset_index(drop=True)


def _duplicates(staged: pd.DataFrame, contract: Contract) -> tuple[np.ndarray, np.ndarray]:
    """(exact duplicates to drop, rows whose key is shared with different content)."""
    content = [p.name for p in contract.properties if not p.lineage]
    key = list(contract.primary_key) or content
    n = len(staged)
    duplicate = np.zeros(n, dtype=bool)
    conflict = np.zeros(n, dtype=bool)
    if n == 0:
        return duplicate, conflict
    shared = staged.duplicated(subset=key, keep=False).to_numpy(dtype=bool)
    if not shared.any():
        return duplicate, conflict
    positions = np.flatnonzero(shared)
    subset = _hashable(staged.iloc[positions][content])
    exact = subset.duplicated(keep="first").to_numpy(dtype=bool)
    duplicate[positions[exact]] = True
    distinct = subset[~exact]
    clashing = distinct.duplicated(subset=key, keep=False).to_numpy(dtype=bool)
    if clashing.any():
        clash_keys = distinct[clashing][key].drop_duplicates()
        marked = subset[key].merge(clash_keys, how="left", on=key, indicator=True)
        in_clash = (marked["_merge"] == "both").to_numpy(dtype=bool)
        conflict[positions[in_clash & ~exact]] = True
    return duplicate, conflict


def _struct_text(value: Any) -> Any:
    return repr(sorted(value.items())) if isinstance(value, dict) else value


def _hashable(frame: pd.DataFrame) -> pd.DataFrame:
    """Struct (dict) columns as text so rows can be compared."""
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object and out[name].map(lambda v: isinstance(v, dict)).any():
            out[name] = out[name].map(_struct_text)
    return out


def _gx_checks(checks: Sequence[Check], as_received: dict[str, str]) -> list[Check]:
    """The checks GX runs (the timezone check reads the column as received)."""
    run: list[Check] = []
    for check in checks:
        if check.kind is RuleKind.TYPE or check.id == PRIMARY_KEY_CHECK:
            continue
        if check.kind is RuleKind.TIMEZONE and check.column in as_received:
            run.append(
                Check(
                    id=check.id,
                    kind=check.kind,
                    column=as_received[check.column],
                    severity=check.severity,
                    code=check.code,
                    description=check.description,
                    params=check.params,
                )
            )
        else:
            run.append(check)
    return run


def _table_success(check: Check, outcome: gx.GxOutcome) -> bool:
    """Tolerances in rows are judged on GX's unexpected count."""
    if check.kind in (RuleKind.NULL_SHARE, RuleKind.INVALID_SHARE) and check.param("unit") != (
        "percent"
    ):
        limit = check.param("max_value")
        if limit is not None and outcome.unexpected_count is not None:
            return bool(outcome.unexpected_count <= limit)
    return outcome.success


#: Slices are used while runs of kept rows average at least this many rows; below that, one
#: filtered copy is cheaper than a long chain of tiny slices.
_MIN_ROWS_PER_SLICE = 256


def without_rows(table: pa.Table, drop: np.ndarray) -> pa.Table:
    """``table`` without the rows where ``drop`` is True.

    Kept rows are returned as zero-copy slices of ``table`` when they form a few long runs
    (the usual case: a handful of rejected rows in a delivery), so staging a large table
    does not copy it; many short runs are filtered into one copy instead.
    """
    if not drop.any():
        return table
    keep = ~drop
    edges = np.flatnonzero(np.diff(np.concatenate(([False], keep, [False])).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    if len(starts) == 0:
        return table.slice(0, 0)
    if len(starts) > max(4096, table.num_rows // _MIN_ROWS_PER_SLICE):
        return table.filter(pa.array(keep))
    return pa.concat_tables(
        [table.slice(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]
    )


def _declare_nullability(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast to ``schema``; a required field that still holds nulls (its required check was
    downgraded to a warning) stays nullable. No metadata from pandas: same bytes on re-runs."""
    fields = [
        field.with_nullable(True) if not field.nullable and table[field.name].null_count else field
        for field in schema
    ]
    return table.cast(pa.schema(fields, metadata=schema.metadata))


def _result(
    check: Check,
    expectation: str,
    *,
    success: bool,
    element_count: int | None = None,
    unexpected: int | None = None,
    evaluated: bool = True,
    note: str | None = None,
) -> CheckResult:
    return CheckResult(
        check_id=check.id,
        rule=check.kind.value,
        expectation=expectation,
        column=check.column,
        severity=check.severity,
        level="row" if check.row_level else "table",
        code=check.code,
        success=success,
        element_count=element_count,
        unexpected_count=unexpected,
        evaluated=evaluated,
        note=note,
    )


def validate_table(
    data: pa.Table | pd.DataFrame,
    contract: Contract,
    *,
    run_id: str,
    feed: str | None = None,
    as_of: datetime | None = None,
    upstream: Sequence[QuarantineEntry] = (),
    upstream_duplicates: int = 0,
) -> ValidationOutcome:
    """Validate ``data`` against ``contract``; see the module docstring for the steps."""
    if as_of is not None and as_of.tzinfo is None:
        raise ContractError("as_of must carry a UTC offset", code="CONTRACT_AS_OF")
    frame = _to_frame(data)
    checks = compile_checks(contract)
    findings: list[Finding] = []
    names = contract.names()
    for prop in contract.properties:
        if prop.name not in frame.columns:
            findings.append(
                Finding(
                    code="CONTRACT_COLUMN_MISSING",
                    severity=Sev.ERROR if prop.required else Sev.WARNING,
                    message=f"column {prop.name} is missing from the data",
                    column=prop.name,
                )
            )
    for column in frame.columns:
        if column not in names:
            findings.append(
                Finding(
                    code="CONTRACT_COLUMN_UNEXPECTED",
                    severity=Sev.WARNING,
                    message=f"column {column} is not in the contract and was not staged",
                    column=str(column),
                )
            )
    n = len(frame)
    columns: dict[str, _Column] = {}
    for prop in contract.properties:
        series = frame[prop.name] if prop.name in frame.columns else pd.Series([None] * n)
        columns[prop.name] = coerce_column(series.reset_index(drop=True), prop)
    del frame
    staged = pd.DataFrame({name: col.staged for name, col in columns.items()})
    duplicate, conflict = _duplicates(staged, contract)
    keep = ~duplicate
    kept = np.flatnonzero(keep)
    checked_columns: dict[str, pd.Series] = {name: col.checked for name, col in columns.items()}
    as_received: dict[str, str] = {}
    for name, col in columns.items():
        if col.as_received is not None:
            as_received[name] = f"{name}{_TZ_SUFFIX}"
            checked_columns[as_received[name]] = col.as_received
    checked = pd.DataFrame(checked_columns)
    if duplicate.any():
        checked = checked.iloc[kept].reset_index(drop=True)
    gx_checks = _gx_checks(checks, as_received)
    outcomes = {o.check_id: o for o in gx.run_checks(checked, gx_checks, as_of=as_of)}

    order = {c.id: i for i, c in enumerate(checks)}
    reasons: dict[int, list[tuple[int, Reason]]] = {}

    def reject(rows: np.ndarray, check: Check) -> None:
        for row in rows.tolist():
            reasons.setdefault(row, []).append(
                (order[check.id], Reason(check.code, check.id, check.column))
            )

    results: list[CheckResult] = []
    m = len(kept)
    for check in checks:
        if check.kind is RuleKind.TYPE:
            failed = columns[check.column or ""].type_failed
            bad = np.flatnonzero(failed[keep]) if failed is not None else np.zeros(0, np.int64)
            reject(bad, check)
            results.append(
                _result(check, HUB, success=len(bad) == 0, element_count=m, unexpected=len(bad))
            )
            continue
        if check.id == PRIMARY_KEY_CHECK:
            bad = np.flatnonzero(conflict[keep])
            reject(bad, check)
            results.append(
                _result(
                    check,
                    HUB,
                    success=len(bad) == 0,
                    element_count=m,
                    unexpected=len(bad),
                    note=f"{int(duplicate.sum())} exact duplicate rows suppressed",
                )
            )
            continue
        outcome = outcomes.get(check.id)
        if outcome is None:
            note = "not evaluated: no run time (as_of) given"
            results.append(
                _result(
                    check,
                    HUB,
                    success=True,
                    evaluated=False,
                    note=note if check.kind is RuleKind.FRESHNESS else "not evaluated",
                )
            )
            continue
        success = _table_success(check, outcome) if not check.row_level else outcome.success
        if outcome.error is not None:
            success = False
        results.append(
            _result(
                check,
                outcome.expectation_type,
                success=success,
                element_count=outcome.element_count,
                unexpected=outcome.unexpected_count,
                note=outcome.error,
            )
        )
        if check.row_level and check.severity is Sev.ERROR:
            if outcome.error is not None:
                # A check that could not run cannot vouch for any row.
                reject(np.arange(m), check)
            else:
                reject(outcome.unexpected_rows, check)
        elif not check.row_level and not success:
            findings.append(
                Finding(
                    code=check.code,
                    severity=check.severity,
                    message=f"{check.description}: failed"
                    + (
                        f" ({outcome.unexpected_count} of {outcome.element_count} rows)"
                        if outcome.unexpected_count is not None
                        else ""
                    ),
                    check_id=check.id,
                    column=check.column,
                )
            )

    rejected = np.zeros(m, dtype=bool)
    if reasons:
        rejected[np.fromiter(reasons.keys(), dtype=np.int64)] = True
    staged_kept = staged.iloc[kept].reset_index(drop=True) if duplicate.any() else staged
    schema = to_arrow_schema(contract)
    # Rejected rows may hold nulls in required fields: convert with every field nullable,
    # drop them, then declare the contract's nullability (a metadata-only cast).
    loose = pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)
    table = pa.Table.from_pandas(staged_kept, schema=loose, preserve_index=False, safe=True)
    valid = _declare_nullability(without_rows(table, rejected), schema)
    entries = list(upstream)
    if reasons:
        source = staged_kept["_source_ref"] if "_source_ref" in staged_kept.columns else None
        key_props = [
            contract.prop(k) for k in contract.primary_key if not contract.prop(k).classified
        ]
        for row in sorted(reasons):
            ref = source.iat[row] if source is not None else None
            key = tuple((p.name, _plain(staged_kept[p.name].iat[row])) for p in key_props)
            entries.append(
                QuarantineEntry(
                    dataset=contract.dataset,
                    source=SourceRef.parse(ref) if isinstance(ref, str) else None,
                    reasons=tuple(r for _, r in sorted(reasons[row], key=lambda x: x[0])),
                    key=key,
                )
            )
    duplicates = int(duplicate.sum()) + upstream_duplicates
    counts = Counts(
        received=n + len(upstream) + upstream_duplicates,
        valid=valid.num_rows,
        quarantined=len(entries),
        duplicates=duplicates,
    )
    report = ValidationReport(
        dataset=contract.dataset,
        contract_id=contract.id,
        contract_version=contract.version,
        contract_sha256=contract.content_sha256,
        run_id=run_id,
        feed=feed,
        counts=counts,
        checks=tuple(results),
        findings=tuple(findings),
        quarantine_reasons=count_reasons(entries),
    )
    return ValidationOutcome(report=report, valid=valid, quarantined=tuple(entries))


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (str, int, float, bool)) else str(value)
