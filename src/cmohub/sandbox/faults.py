"""The sandbox's fault catalog, the ``--faults`` option, and which patient hosts which fault.

Every fault the generator can plant names the one reconciliation rule
(:class:`cmohub.reconcile.catalog.RuleCode`) that must catch it, and nothing else may fire
because of it: precision and recall of the nightly run against ``truth.json`` are both 1.0.
A patient hosts at most one fault (or one canary), so faults never interact.

Pure module: the random source is a parameter.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from cmohub.errors import ConfigError
from cmohub.reconcile.catalog import RuleCode


class Fault(StrEnum):
    TEMPERATURE_EXCURSION = "temperature_excursion"
    COI_CHECK_INVALID = "coi_check_invalid"
    COI_UNKNOWN = "coi_unknown"
    DIN_MULTIPLE_COI = "din_multiple_coi"
    BATCH_COI_MISMATCH = "batch_coi_mismatch"
    CUSTODY_GAP = "custody_gap"
    LOGGER_GAP = "logger_gap"
    REAGENT_EXPIRED = "reagent_expired"
    OPERATOR_NOT_CERTIFIED = "operator_not_certified"
    EM_ACTION_LIMIT = "em_action_limit"
    DEVIATION_OPEN_ON_RELEASED = "deviation_open_on_released"
    QC_OUT_OF_SPEC = "qc_out_of_spec"
    RELEASE_BEFORE_RESULTS = "release_before_results"
    INFUSION_BEFORE_RELEASE = "infusion_before_release"
    VEIN_TO_VEIN_OVER_TARGET = "vein_to_vein_over_target"
    DUPLICATE_FILE = "duplicate_file"
    MALFORMED_HL7_TRUNCATED = "malformed_hl7_truncated"
    MALFORMED_HL7_NUL_BYTES = "malformed_hl7_nul_bytes"
    MALFORMED_HL7_ENCODING = "malformed_hl7_encoding"
    MALFORMED_FHIR_RESOURCE = "malformed_fhir_resource"
    MALFORMED_CSV_ROW = "malformed_csv_row"


RULE_OF: dict[Fault, RuleCode] = {
    Fault.TEMPERATURE_EXCURSION: RuleCode.TEMPERATURE_EXCURSION,
    Fault.COI_CHECK_INVALID: RuleCode.COI_CHECK_INVALID,
    Fault.COI_UNKNOWN: RuleCode.COI_UNKNOWN,
    Fault.DIN_MULTIPLE_COI: RuleCode.DIN_MULTIPLE_COI,
    Fault.BATCH_COI_MISMATCH: RuleCode.BATCH_COI_MISMATCH,
    Fault.CUSTODY_GAP: RuleCode.CUSTODY_GAP,
    Fault.LOGGER_GAP: RuleCode.LOGGER_GAP,
    Fault.REAGENT_EXPIRED: RuleCode.REAGENT_EXPIRED,
    Fault.OPERATOR_NOT_CERTIFIED: RuleCode.OPERATOR_NOT_CERTIFIED,
    Fault.EM_ACTION_LIMIT: RuleCode.EM_ACTION_LIMIT,
    Fault.DEVIATION_OPEN_ON_RELEASED: RuleCode.DEVIATION_OPEN_ON_RELEASED,
    Fault.QC_OUT_OF_SPEC: RuleCode.QC_OUT_OF_SPEC,
    Fault.RELEASE_BEFORE_RESULTS: RuleCode.RELEASE_BEFORE_RESULTS,
    Fault.INFUSION_BEFORE_RELEASE: RuleCode.INFUSION_BEFORE_RELEASE,
    Fault.VEIN_TO_VEIN_OVER_TARGET: RuleCode.VEIN_TO_VEIN_OVER_TARGET,
    Fault.DUPLICATE_FILE: RuleCode.FILE_DUPLICATE,
    Fault.MALFORMED_HL7_TRUNCATED: RuleCode.RECORD_MALFORMED,
    Fault.MALFORMED_HL7_NUL_BYTES: RuleCode.RECORD_MALFORMED,
    Fault.MALFORMED_HL7_ENCODING: RuleCode.RECORD_MALFORMED,
    Fault.MALFORMED_FHIR_RESOURCE: RuleCode.RECORD_MALFORMED,
    Fault.MALFORMED_CSV_ROW: RuleCode.RECORD_MALFORMED,
}

#: Faults planted in files after generation, not hosted by a patient.
FILE_FAULTS = frozenset({Fault.DUPLICATE_FILE})
#: Faults whose host must be a patient of the HL7 site (orders arrive as HL7 there).
HL7_FAULTS = frozenset(
    {Fault.MALFORMED_HL7_TRUNCATED, Fault.MALFORMED_HL7_NUL_BYTES, Fault.MALFORMED_HL7_ENCODING}
)
#: Names accepted by ``--faults`` besides the fault names themselves.
GROUPS: dict[str, frozenset[Fault]] = {
    "all": frozenset(Fault),
    "none": frozenset(),
    "malformed": frozenset(f for f in Fault if f.value.startswith("malformed_")),
}

#: Share of patients hosting each patient fault (at least one host each when selected).
FAULT_RATE = 0.005
#: Share of patients carrying canary identifiers (at least two).
CANARY_RATE = 0.005


def parse_fault_selection(text: str) -> frozenset[Fault]:
    """``all``, ``none`` or a comma-separated list of fault names and groups."""
    selected: set[Fault] = set()
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name in GROUPS:
            selected |= GROUPS[name]
            continue
        try:
            selected.add(Fault(name))
        except ValueError:
            known = ", ".join([*GROUPS, *(f.value for f in Fault)])
            raise ConfigError(
                f"unknown fault {name!r}; choose from: {known}", code="SANDBOX_FAULT_UNKNOWN"
            ) from None
    return frozenset(selected)


@dataclass(frozen=True, slots=True)
class PlantedFault:
    """One line of ``truth.json``: the fault, the rule that must catch it, and where it is."""

    fault: Fault
    key: Mapping[str, str | int | list[str]]
    detail: str

    @property
    def rule(self) -> RuleCode:
        return RULE_OF[self.fault]

    def to_dict(self) -> dict[str, object]:
        return {
            "fault": self.fault.value,
            "rule": self.rule.value,
            "key": dict(self.key),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class FaultPlan:
    """Which patient (by index) hosts which fault, which carry canaries, and what did not fit."""

    selected: frozenset[Fault]
    hosts: Mapping[int, Fault]
    canaries: frozenset[int]
    file_faults: Mapping[Fault, int] = field(default_factory=dict)  # fault -> occurrences
    not_planted: Mapping[Fault, int] = field(default_factory=dict)  # fault -> missing count

    def fault_of(self, index: int) -> Fault | None:
        return self.hosts.get(index)


def occurrences(patients: int) -> int:
    """How many times each selected fault is planted for a program of ``patients``."""
    return max(1, round(patients * FAULT_RATE))


def plan_faults(selected: Iterable[Fault], patients: int, rng: random.Random) -> FaultPlan:
    """Choose host patients for every selected fault, and the canary patients.

    Patient 0 never hosts a fault (a DIN-sharing fault needs an earlier clean patient). When a
    program is too small to host every occurrence, the remainder is reported in
    ``not_planted`` rather than silently dropped.
    """
    chosen = frozenset(selected)
    wanted: list[Fault] = []
    n = occurrences(patients)
    for fault in sorted(chosen - FILE_FAULTS):
        wanted.extend([fault] * n)
    n_canaries = max(2, round(patients * CANARY_RATE)) if patients >= 4 else min(patients, 1)
    free = list(range(1, patients))
    rng.shuffle(free)
    canaries = frozenset(free[:n_canaries]) if patients >= 4 else frozenset(range(n_canaries))
    free = [i for i in free if i not in canaries]
    hosts: dict[int, Fault] = {}
    missing: dict[Fault, int] = {}
    for fault, index in zip(wanted, free, strict=False):
        hosts[index] = fault
    for fault in wanted[len(free) :]:
        missing[fault] = missing.get(fault, 0) + 1
    file_faults = dict.fromkeys(sorted(chosen & FILE_FAULTS), n)
    return FaultPlan(chosen, hosts, canaries, file_faults, missing)
