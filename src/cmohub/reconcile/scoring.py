"""Score the exceptions of a run against a sandbox ``truth.json`` (pure).

Each planted fault names the rule that must catch it and the keys of what it planted. An
exception *matches* a fault when both have the same rule and agree on the fault's identifying
keys for that rule (file names are compared by base name: the hub knows a delivered file by
its name, not by the sandbox's folder). Matching is one to one. Precision = matched
exceptions / all exceptions; recall = matched faults / all faults.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: For each rule, the keys that identify a planted fault (any one listed group must agree).
MATCH_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "TEMPERATURE_EXCURSION": (("shipment_id",),),
    "LOGGER_GAP": (("logger_id",),),
    "CUSTODY_GAP": (("shipment_id",),),
    "CUSTODY_WRONG_SITE": (("shipment_id",),),
    "DIN_MULTIPLE_COI": (("din",),),
    "BATCH_COI_MISMATCH": (("batch_id",),),
    "REAGENT_EXPIRED": (("batch_id", "step_no", "lot_number"),),
    "OPERATOR_NOT_CERTIFIED": (("batch_id", "step_no"),),
    "EM_ACTION_LIMIT": (("sample_id",),),
    "DEVIATION_OPEN_ON_RELEASED": (("deviation_id",),),
    "QC_OUT_OF_SPEC": (("result_id",),),
    "RELEASE_BEFORE_RESULTS": (("batch_id", "test_code"),),
    "INFUSION_BEFORE_RELEASE": (("batch_id",),),
    "VEIN_TO_VEIN_OVER_TARGET": (("coi",),),
    "COI_CHECK_INVALID": (("event_id",), ("batch_id",), ("file", "line")),
    "COI_UNKNOWN": (("batch_id",), ("event_id",)),
    "FILE_DUPLICATE": (("file",),),
    "RECORD_MALFORMED": (("control_id",), ("id",), ("file", "line"), ("file",)),
}


@dataclass
class RuleScore:
    rule: str
    planted: int = 0
    raised: int = 0
    matched: int = 0


@dataclass
class Score:
    precision: float
    recall: float
    matched: int
    planted: int
    raised: int
    by_rule: dict[str, RuleScore] = field(default_factory=dict)
    missed: list[dict[str, Any]] = field(default_factory=list)  # faults no exception caught
    unexpected: list[dict[str, Any]] = field(default_factory=list)  # exceptions of no fault

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "matched": self.matched,
            "planted": self.planted,
            "raised": self.raised,
            "by_rule": {k: vars(v) for k, v in sorted(self.by_rule.items())},
            "missed": self.missed,
            "unexpected": self.unexpected,
        }


def _norm(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "file":
        # A delivered file is known by its plain name: ACME_X.csv arrived as ACME_X.csv.pgp.
        base = str(value).replace("\\", "/").rsplit("/", 1)[-1]
        for suffix in (".pgp", ".gpg", ".asc"):
            base = base.removesuffix(suffix)
        return base
    if name in ("step_no", "leg_no", "line"):
        try:
            return int(value)
        except (TypeError, ValueError):
            return value
    return str(value)


def _locator_line(key: Mapping[str, Any]) -> int | None:
    """The 1-based file line of a quarantine locator: ``line=5``, or ``row=12`` (a CSV data
    row: its line is one more, for the header line)."""
    locator = str(key.get("locator") or "")
    kind, _, number = locator.rpartition("/")[2].partition("=")
    if kind == "line" and number.isdigit():
        return int(number)
    if kind == "row" and number.isdigit():
        return int(number) + 1
    return None


def exception_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    """Everything an exception is known by: its columns and the keys in its evidence."""
    evidence = json.loads(row.get("evidence_json") or "{}")
    keys: dict[str, Any] = dict(evidence.get("key", {}))
    for column in ("coi", "batch_id", "shipment_id"):
        if row.get(column) is not None:
            keys.setdefault(column, row[column])
    line = _locator_line(keys)
    if line is not None:
        keys.setdefault("line", line)
    locator = str(keys.get("locator") or "")
    for prefix, name in (("msg=", "control_id"), ("control_id=", "control_id"), ("id=", "id")):
        if locator.startswith(prefix):
            keys.setdefault(name, locator[len(prefix) :])
    return keys


#: The sandbox names an event by the eventID it declared; the hub keys events by their GS1
#: canonical hash (``event_id``) and keeps the declared one as ``source_event_id``.
ALIASES: dict[str, tuple[str, ...]] = {"event_id": ("event_id", "source_event_id")}


def _agrees(fault_key: Mapping[str, Any], found: Mapping[str, Any], names: Sequence[str]) -> bool:
    if any(fault_key.get(n) is None for n in names):
        return False
    return all(
        any(
            _norm(n, fault_key.get(n)) == _norm(n, found.get(alias))
            for alias in ALIASES.get(n, (n,))
        )
        for n in names
    )


def score(exceptions: Iterable[Mapping[str, Any]], faults: Iterable[Mapping[str, Any]]) -> Score:
    """Match exceptions (rows of the ``exceptions`` dataset) to planted faults."""
    raised = [(row, exception_keys(row)) for row in exceptions]
    planted = list(faults)
    used: set[int] = set()
    by_rule: dict[str, RuleScore] = {}
    missed = []
    matched = 0
    for fault in planted:
        rule = fault["rule"]
        tally = by_rule.setdefault(rule, RuleScore(rule))
        tally.planted += 1
        hit = None
        for index, (row, keys) in enumerate(raised):
            if index in used or row["rule_code"] != rule:
                continue
            if any(_agrees(fault["key"], keys, names) for names in MATCH_KEYS.get(rule, ())):
                hit = index
                break
        if hit is None:
            missed.append({"rule": rule, "key": fault["key"], "fault": fault.get("fault")})
        else:
            used.add(hit)
            tally.matched += 1
            matched += 1
    for row, _ in raised:
        by_rule.setdefault(row["rule_code"], RuleScore(row["rule_code"])).raised += 1
    unexpected = [
        {
            "rule": row["rule_code"],
            "exception_id": row.get("exception_id"),
            "description": row.get("description"),
        }
        for index, (row, _) in enumerate(raised)
        if index not in used
    ]
    return Score(
        precision=matched / len(raised) if raised else 1.0,
        recall=matched / len(planted) if planted else 1.0,
        matched=matched,
        planted=len(planted),
        raised=len(raised),
        by_rule=by_rule,
        missed=missed,
        unexpected=unexpected,
    )
