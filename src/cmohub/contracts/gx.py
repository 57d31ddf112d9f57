"""Great Expectations 1.x adapter: the only importer of ``great_expectations``.

Compiles :class:`~cmohub.contracts.checks.Check` values into an ``ExpectationSuite`` (with the
custom expectations the domain needs: ISBT 128 check characters, timezone-aware timestamps)
and runs it on a pandas frame in an **ephemeral** context (no files, no Data Docs, analytics
and progress bars off). What comes back is :class:`GxOutcome` per check: success, counts and
the *positions* of failing rows — never values.

Privacy: GX puts unexpected values in ``partial_unexpected_list`` under its default result
format and under BASIC, SUMMARY and COMPLETE. The runs here use COMPLETE (the only format that
lists failing rows) with ``exclude_unexpected_values``, ``partial_unexpected_count: 0``, no
unexpected rows and no index query, so a result carries row positions and counts only. GX
still computes the unexpected values internally, in memory, and drops them when formatting;
nothing is stored because the context is ephemeral. Error messages of checks that raise are
replaced by the exception's type name (a message may quote a value).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.execution_engine import pandas_execution_engine
from great_expectations.execution_engine.pandas_execution_engine import PandasExecutionEngine
from great_expectations.expectations.core.expect_column_max_to_be_between import (
    ExpectColumnMaxToBeBetween,
)
from great_expectations.expectations.core.expect_column_value_lengths_to_be_between import (
    ExpectColumnValueLengthsToBeBetween,
)
from great_expectations.expectations.core.expect_column_values_to_be_between import (
    ExpectColumnValuesToBeBetween,
)
from great_expectations.expectations.core.expect_column_values_to_be_in_set import (
    ExpectColumnValuesToBeInSet,
)
from great_expectations.expectations.core.expect_column_values_to_be_unique import (
    ExpectColumnValuesToBeUnique,
)
from great_expectations.expectations.core.expect_column_values_to_match_regex import (
    ExpectColumnValuesToMatchRegex,
)
from great_expectations.expectations.core.expect_column_values_to_not_be_null import (
    ExpectColumnValuesToNotBeNull,
)
from great_expectations.expectations.core.expect_table_row_count_to_be_between import (
    ExpectTableRowCountToBeBetween,
)
from great_expectations.expectations.expectation import ColumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider.column_condition_partial import (
    column_condition_partial,
)
from great_expectations.expectations.metrics.map_metric_provider.column_map_metric_provider import (
    ColumnMapMetricProvider,
)

from cmohub.contracts.checks import Check
from cmohub.contracts.model import RuleKind
from cmohub.identifiers import MOD37_ALPHABET

#: The result format of every run (see the module docstring).
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "exclude_unexpected_values": True,
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}

# GX fingerprints every pandas batch smaller than HASH_THRESHOLD bytes by hashing all of it,
# twice per validation (once per get_batch); on a million rows that costs more than all the
# checks together. The fingerprint is only a batch marker, which the hub does not use (runs are
# identified by run ID and raw SHA-256), so fingerprinting is switched off.
pandas_execution_engine.HASH_THRESHOLD = 0

# --- custom expectations ---------------------------------------------------------------------

_MOD37_VALUE = np.full(256, -1, dtype=np.int64)
for _i, _ch in enumerate(MOD37_ALPHABET):
    _MOD37_VALUE[ord(_ch)] = _i


def isbt_check_characters_valid(values: pd.Series, *, identifier: str) -> pd.Series:
    """Vectorized: True where a COI (16) or DIN (14) in data form has a valid check character.

    Only the data form is accepted here (no spaces, no bar-code prefix, upper case); the
    contract's pattern check says which part is malformed.
    """
    length = 16 if identifier == "coi" else 14
    text = values.astype("string")
    ok = (text.str.len() == length).fillna(False).to_numpy(dtype=bool)
    result = np.zeros(len(values), dtype=bool)
    if ok.any():
        candidates = text[ok].to_numpy(dtype=object)
        raw = "".join(candidates).encode("ascii", errors="replace")
        codes = np.frombuffer(raw, dtype=np.uint8).reshape(-1, length)
        digits = _MOD37_VALUE[codes]
        total = np.zeros(len(candidates), dtype=np.int64)
        for column in range(length - 1):
            total = ((total + digits[:, column]) * 2) % 37
        expected = (38 - total) % 37
        valid = (digits[:, : length - 1] >= 0).all(axis=1) & (digits[:, : length - 1] < 36).all(
            axis=1
        )
        result[ok] = valid & (expected == digits[:, length - 1])
    return pd.Series(result, index=values.index)


_OFFSET = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)


def timestamps_aware(values: pd.Series) -> pd.Series:
    """True where a timestamp carries a UTC offset (aware datetimes, ISO text with Z/±hh:mm)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return pd.Series(True, index=values.index)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return pd.Series(False, index=values.index)

    def aware(value: Any) -> bool:
        if isinstance(value, datetime):
            return value.tzinfo is not None and value.utcoffset() is not None
        if isinstance(value, str):
            return bool(_OFFSET.search(value.strip()))
        return False

    return values.map(aware).astype(bool)


class ColumnValuesIsbtCheckCharacter(ColumnMapMetricProvider):
    condition_metric_name = "column_values.cmohub_isbt_check_character"
    condition_value_keys = ("identifier",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, identifier: str, **kwargs: Any) -> pd.Series:
        return isbt_check_characters_valid(column, identifier=identifier)


class ExpectColumnValuesToHaveValidIsbtCheckCharacter(ColumnMapExpectation):
    """COI or DIN values (data form) whose ISO/IEC 7064 MOD 37-2 check character matches."""

    identifier: Literal["coi", "din"]
    map_metric: ClassVar[str] = "column_values.cmohub_isbt_check_character"
    success_keys: ClassVar[tuple[str, ...]] = ("identifier", "mostly")


class ColumnValuesTimezoneAware(ColumnMapMetricProvider):
    condition_metric_name = "column_values.cmohub_timezone_aware"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> pd.Series:
        return timestamps_aware(column)


class ExpectColumnValuesToBeTimezoneAware(ColumnMapExpectation):
    """Timestamps that carry a UTC offset (naive local times are ambiguous)."""

    map_metric: ClassVar[str] = "column_values.cmohub_timezone_aware"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


# --- compiling checks ------------------------------------------------------------------------


def to_expectation(check: Check, *, as_of: datetime | None = None) -> Any | None:
    """The GX expectation of ``check`` (None: the check is run by the hub, not by GX)."""
    column = check.column or ""
    meta = {"cmohub_check_id": check.id}
    mostly = 1.0
    if check.kind is RuleKind.REQUIRED:
        return ExpectColumnValuesToNotBeNull(column=column, meta=meta)
    if check.kind is RuleKind.PATTERN:
        return ExpectColumnValuesToMatchRegex(column=column, regex=check.param("regex"), meta=meta)
    if check.kind is RuleKind.LENGTH:
        return ExpectColumnValueLengthsToBeBetween(
            column=column,
            min_value=check.param("min_value"),
            max_value=check.param("max_value"),
            meta=meta,
        )
    if check.kind is RuleKind.RANGE:
        return ExpectColumnValuesToBeBetween(
            column=column,
            min_value=check.param("min_value"),
            max_value=check.param("max_value"),
            strict_min=bool(check.param("strict_min", False)),
            strict_max=bool(check.param("strict_max", False)),
            meta=meta,
        )
    if check.kind is RuleKind.VALUE_SET:
        return ExpectColumnValuesToBeInSet(
            column=column, value_set=list(check.param("value_set") or ()), meta=meta
        )
    if check.kind is RuleKind.TIMEZONE:
        return ExpectColumnValuesToBeTimezoneAware(column=column, meta=meta)
    if check.kind is RuleKind.CHECK_CHARACTER:
        return ExpectColumnValuesToHaveValidIsbtCheckCharacter(
            column=column, identifier=check.param("identifier"), meta=meta
        )
    if check.kind is RuleKind.UNIQUE and check.column is not None:
        return ExpectColumnValuesToBeUnique(column=column, meta=meta)
    if check.kind is RuleKind.ROW_COUNT:
        return ExpectTableRowCountToBeBetween(
            min_value=_whole(check.param("min_value"), up=True),
            max_value=_whole(check.param("max_value"), up=False),
            meta=meta,
        )
    if check.kind is RuleKind.FRESHNESS:
        if as_of is None:
            return None
        oldest = as_of - timedelta(seconds=float(check.param("max_age_seconds")))
        return ExpectColumnMaxToBeBetween(column=column, min_value=oldest, meta=meta)
    if check.kind in (RuleKind.NULL_SHARE, RuleKind.INVALID_SHARE):
        mostly = _mostly(check)
        if check.kind is RuleKind.NULL_SHARE:
            return ExpectColumnValuesToNotBeNull(column=column, mostly=mostly, meta=meta)
        if check.param("regex") is not None:
            return ExpectColumnValuesToMatchRegex(
                column=column, regex=check.param("regex"), mostly=mostly, meta=meta
            )
        return ExpectColumnValuesToBeInSet(
            column=column, value_set=list(check.param("value_set") or ()), mostly=mostly, meta=meta
        )
    return None


def _whole(value: Any, *, up: bool) -> int | None:
    """A row-count bound as a whole number: "more than 0" is at least 1, "less than 10" at
    most 9 (the ODCS strict operators arrive as bounds nudged by 1e-9)."""
    if value is None:
        return None
    number = float(value)
    return int(np.ceil(number)) if up else int(np.floor(number))


def _mostly(check: Check) -> float:
    """Tolerances ("at most 5 percent invalid") as GX's ``mostly`` share of passing rows."""
    high = check.param("max_value")
    if high is None:
        return 1.0
    if check.param("unit") == "percent":
        return max(0.0, min(1.0, 1.0 - float(high) / 100.0))
    return 1.0  # a tolerance in rows is checked by the hub on the unexpected count


@dataclass(frozen=True, slots=True)
class GxOutcome:
    """What one expectation said: counts and failing row positions, never values."""

    check_id: str
    expectation_type: str
    success: bool
    element_count: int | None
    unexpected_count: int | None
    unexpected_rows: np.ndarray  # positions (0-based) in the frame that was validated
    error: str | None = None


def build_suite(name: str, checks: Sequence[Check], *, as_of: datetime | None) -> Any:
    suite = gx.ExpectationSuite(name=name)
    for check in checks:
        expectation = to_expectation(check, as_of=as_of)
        if expectation is not None:
            suite.add_expectation(expectation)
    return suite


def _context() -> Any:
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_checks(
    frame: pd.DataFrame, checks: Sequence[Check], *, as_of: datetime | None = None
) -> list[GxOutcome]:
    """Run the GX-backed ``checks`` on ``frame`` (positional index) in an ephemeral context.

    One batch per column, holding only that column: every GX map metric filters its batch by
    the column's non-null rows (``df[df[column].notnull()]``), which copies every column of the
    batch, several times per expectation. On a one-column batch that copy is one column, which
    keeps the extra memory of a 10M-row validation within a small multiple of one column.
    """
    context = _context()
    definition = (
        context.data_sources.add_pandas("cmohub")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
    )
    frame = frame.reset_index(drop=True)
    groups: dict[str | None, list[Check]] = {}
    for check in checks:
        groups.setdefault(check.column, []).append(check)
    outcomes: list[GxOutcome] = []
    for column, group in groups.items():
        suite = build_suite(f"cmohub:{column or 'table'}", group, as_of=as_of)
        if not suite.expectations:
            continue
        # Table-level checks (row count) need the rows, not their values.
        part = frame[[column]] if column is not None else pd.DataFrame(index=frame.index)
        batch = definition.get_batch(batch_parameters={"dataframe": part})
        result = batch.validate(suite, result_format=RESULT_FORMAT)
        outcomes.extend(_outcome(item) for item in result.results)
    return outcomes


def _outcome(item: Any) -> GxOutcome:
    config = item.expectation_config
    check_id = str((config.meta or {}).get("cmohub_check_id", config.type))
    raw = item.result or {}
    exception = item.exception_info or {}
    error = None
    if exception.get("raised_exception"):
        # The message may quote a value; keep only what kind of failure it was.
        error = "the check raised an error inside Great Expectations"
    indices = raw.get("unexpected_index_list")
    rows = np.asarray(indices if isinstance(indices, list) else [], dtype=np.int64)
    return GxOutcome(
        check_id=check_id,
        expectation_type=str(config.type),
        success=bool(item.success),
        element_count=_count(raw.get("element_count")),
        unexpected_count=_count(raw.get("unexpected_count")),
        unexpected_rows=rows,
        error=error,
    )


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) else None


def raw_results_for_test(frame: pd.DataFrame, checks: Sequence[Check]) -> dict[str, Any]:
    """The full GX result as JSON (for privacy tests that scan it for canary values)."""
    context = _context()
    suite = build_suite("cmohub", checks, as_of=None)
    batch = (
        context.data_sources.add_pandas("cmohub")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame.reset_index(drop=True)})
    )
    as_json: dict[str, Any] = batch.validate(suite, result_format=RESULT_FORMAT).to_json_dict()
    return as_json
