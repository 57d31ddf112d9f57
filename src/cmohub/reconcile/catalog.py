"""The catalog of reconciliation rules: stable code, severity, what it means.

These codes are a public interface: the sandbox's ``truth.json`` names, for each planted
fault, the rule that must catch it; the ``exceptions`` dataset, reports and the precision and
recall of the demo are keyed by them. Never reuse a code for another meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Severity(IntEnum):
    """Ordered so that sorting by severity descending ranks the worst first."""

    INFO = 0
    MINOR = 1
    MAJOR = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name.lower()


class RuleCode(StrEnum):
    COI_CHECK_INVALID = "COI_CHECK_INVALID"
    COI_UNKNOWN = "COI_UNKNOWN"
    DIN_MULTIPLE_COI = "DIN_MULTIPLE_COI"
    BATCH_COI_MISMATCH = "BATCH_COI_MISMATCH"
    CUSTODY_GAP = "CUSTODY_GAP"
    CUSTODY_WRONG_SITE = "CUSTODY_WRONG_SITE"
    TEMPERATURE_EXCURSION = "TEMPERATURE_EXCURSION"
    LOGGER_GAP = "LOGGER_GAP"
    REAGENT_EXPIRED = "REAGENT_EXPIRED"
    OPERATOR_NOT_CERTIFIED = "OPERATOR_NOT_CERTIFIED"
    EM_ACTION_LIMIT = "EM_ACTION_LIMIT"
    DEVIATION_OPEN_ON_RELEASED = "DEVIATION_OPEN_ON_RELEASED"
    QC_OUT_OF_SPEC = "QC_OUT_OF_SPEC"
    RELEASE_BEFORE_RESULTS = "RELEASE_BEFORE_RESULTS"
    INFUSION_BEFORE_RELEASE = "INFUSION_BEFORE_RELEASE"
    VEIN_TO_VEIN_OVER_TARGET = "VEIN_TO_VEIN_OVER_TARGET"
    FILE_DUPLICATE = "FILE_DUPLICATE"
    RECORD_MALFORMED = "RECORD_MALFORMED"


@dataclass(frozen=True, slots=True)
class RuleInfo:
    code: RuleCode
    severity: Severity
    title: str
    description: str


RULES: dict[RuleCode, RuleInfo] = {
    info.code: info
    for info in (
        RuleInfo(
            RuleCode.COI_CHECK_INVALID,
            Severity.CRITICAL,
            "COI check character invalid",
            "A record carries a COI whose check character does not match: the identifier "
            "was corrupted in transit or mistyped. The record is quarantined.",
        ),
        RuleInfo(
            RuleCode.COI_UNKNOWN,
            Severity.CRITICAL,
            "COI unknown to the vault",
            "A CMO or courier record names a COI the sponsor's vault never issued.",
        ),
        RuleInfo(
            RuleCode.DIN_MULTIPLE_COI,
            Severity.CRITICAL,
            "One DIN linked to two COIs",
            "The same donation (DIN) appears under two chains of identity.",
        ),
        RuleInfo(
            RuleCode.BATCH_COI_MISMATCH,
            Severity.CRITICAL,
            "Batch COI differs from its collection",
            "A batch's COI differs from the COI of the collection (DIN) it consumed.",
        ),
        RuleInfo(
            RuleCode.CUSTODY_GAP,
            Severity.MAJOR,
            "Custody gap",
            "Possession changed without a recorded handoff, or no custody event for longer "
            "than the lane allows.",
        ),
        RuleInfo(
            RuleCode.CUSTODY_WRONG_SITE,
            Severity.MAJOR,
            "Received at the wrong site",
            "Material was received at a site other than the shipment's destination.",
        ),
        RuleInfo(
            RuleCode.TEMPERATURE_EXCURSION,
            Severity.CRITICAL,
            "Temperature excursion beyond budget",
            "Cumulative minutes outside the product's temperature class exceed its "
            "excursion budget for the shipment.",
        ),
        RuleInfo(
            RuleCode.LOGGER_GAP,
            Severity.MAJOR,
            "Logger data gap",
            "The shipment's data logger recorded nothing for longer than allowed.",
        ),
        RuleInfo(
            RuleCode.REAGENT_EXPIRED,
            Severity.MAJOR,
            "Reagent lot expired at use",
            "A reagent lot was used after its expiry date.",
        ),
        RuleInfo(
            RuleCode.OPERATOR_NOT_CERTIFIED,
            Severity.MAJOR,
            "Operator not certified",
            "A step was performed by an operator without a valid certification for it.",
        ),
        RuleInfo(
            RuleCode.EM_ACTION_LIMIT,
            Severity.MAJOR,
            "Environmental monitoring over action limit",
            "A step ran in a suite while its environmental monitoring was over an action limit.",
        ),
        RuleInfo(
            RuleCode.DEVIATION_OPEN_ON_RELEASED,
            Severity.CRITICAL,
            "Open patient-impact deviation",
            "A released batch has an open deviation with patient impact.",
        ),
        RuleInfo(
            RuleCode.QC_OUT_OF_SPEC,
            Severity.CRITICAL,
            "QC result out of specification",
            "A QC result is outside the specification version in force on its test date.",
        ),
        RuleInfo(
            RuleCode.RELEASE_BEFORE_RESULTS,
            Severity.CRITICAL,
            "Released before all results",
            "The batch was released before all required final QC results were available.",
        ),
        RuleInfo(
            RuleCode.INFUSION_BEFORE_RELEASE,
            Severity.CRITICAL,
            "Infusion before release",
            "The patient was infused before the batch was released.",
        ),
        RuleInfo(
            RuleCode.VEIN_TO_VEIN_OVER_TARGET,
            Severity.MINOR,
            "Vein-to-vein time over target",
            "Time from collection to infusion exceeds the product's target.",
        ),
        RuleInfo(
            RuleCode.FILE_DUPLICATE,
            Severity.INFO,
            "File delivered again",
            "A file with the same content arrived again; it was registered once.",
        ),
        RuleInfo(
            RuleCode.RECORD_MALFORMED,
            Severity.MAJOR,
            "Malformed record quarantined",
            "A message or record could not be parsed and was quarantined for replay.",
        ),
    )
}
