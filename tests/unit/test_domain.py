from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from cmohub.domain import (
    DATASETS,
    Batch,
    Collection,
    Order,
    ProductSpecification,
    QcResult,
    SpecLimit,
    TemperatureClass,
    TemperatureReading,
)
from cmohub.identifiers import Coi, allocate_din

COI = str(Coi(fin="A9990", year="26", sequence="AB12C3"))
DIN = str(allocate_din("A9991", 2026, 17))
T0 = datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=1)))


def order(**changes: object) -> Order:
    fields: dict[str, object] = {
        "order_id": "ORD-1",
        "coi": COI,
        "product_code": "SBX-CART-01",
        "ordering_site": "A9990",
        "collection_site": "A9990",
        "ordered_at": T0,
        "status": "placed",
    }
    fields.update(changes)
    return Order.model_validate(fields)


def test_records_are_frozen_and_normalize_identifiers_and_time() -> None:
    record = order(coi=f"&/{COI[:2]} {COI[2:]}")
    assert record.coi == COI
    assert record.ordered_at == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    with pytest.raises(ValidationError):
        record.status = "cancelled"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "error_type"),
    [
        ({"coi": COI[:-1] + ("0" if COI[-1] != "0" else "1")}, "ID_CHECK_CHARACTER"),
        ({"coi": "CHO999026AB12C31"}, "ID_FACILITY"),
        ({"ordering_site": "B1234X"}, "string_pattern_mismatch"),
        ({"ordered_at": datetime(2026, 3, 1, 9, 30)}, "timezone_aware"),  # noqa: DTZ001
        ({"status": "lost"}, "enum"),
        ({"mrn": "MRN-1"}, "extra_forbidden"),
    ],
)
def test_invalid_records_fail_with_a_precise_type(
    change: dict[str, object], error_type: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        order(**change)
    assert caught.value.errors()[0]["type"] == error_type


def test_validation_errors_never_carry_the_input() -> None:
    canary = "CANARY-DOB-1911-11-11"
    with pytest.raises(ValidationError) as caught:
        order(coi=canary)
    assert canary not in str(caught.value)
    assert all(
        "input" not in e or e["input"] != canary for e in caught.value.errors(include_input=False)
    )


def test_no_canonical_record_has_a_patient_identifier_field() -> None:
    identifying = {
        "name",
        "family",
        "given",
        "mrn",
        "birth_date",
        "dob",
        "address",
        "phone",
        "email",
        "subject_id",
        "identifier",
    }
    for dataset, model in DATASETS.items():
        assert not identifying & set(model.model_fields), dataset
    assert {m.__name__ for m in DATASETS.values()} >= {"Order", "Batch", "QcResult", "CustodyEvent"}


def test_batch_links_coi_and_din() -> None:
    batch = Batch(
        batch_id="B-1",
        coi=COI,
        din=DIN,
        cmo="A9996",
        product_code="SBX-CART-01",
        started_at=T0,
        status="in_process",
    )
    assert batch.din == DIN
    with pytest.raises(ValidationError):
        Collection(collection_id="C-1", coi=COI, din=DIN[:-1] + "!", site="A9990", collected_at=T0)


def test_quality_records_check_their_own_consistency() -> None:
    with pytest.raises(ValidationError):
        QcResult(result_id="R1", batch_id="B-1", test_code="VIAB", tested_at=T0, status="final")
    with pytest.raises(ValidationError):
        SpecLimit(test_code="VIAB", lower=90, upper=80)
    with pytest.raises(ValidationError):
        SpecLimit(test_code="STER", lower=1, allowed_text=("negative",))
    spec = ProductSpecification(
        product_code="SBX-CART-01",
        version=2,
        effective_from=date(2026, 1, 1),
        limits=(
            SpecLimit(test_code="VIAB", unit="%", lower=70),
            SpecLimit(test_code="STER", allowed_text=("negative",)),
        ),
    )
    assert spec.limits[0].lower == 70
    with pytest.raises(ValidationError):
        TemperatureClass(code="none")


def test_readings_must_be_finite() -> None:
    with pytest.raises(ValidationError):
        TemperatureReading(logger_id="L1", observed_at=T0, celsius=float("nan"))
