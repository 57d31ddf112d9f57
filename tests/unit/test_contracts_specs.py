"""Product specifications: the version in force on a date, and what changed between versions."""

from __future__ import annotations

from datetime import date

from typer.testing import CliRunner

from cmohub.cli import app
from cmohub.contracts.specifications import SpecChange, diff_specifications
from cmohub.contracts.store import load_product_catalog
from cmohub.domain import ProductSpecification, SpecLimit

CART = load_product_catalog()["SBX-CART-01"]


def test_version_in_force_follows_effective_dates() -> None:
    assert CART.in_force_on(date(2024, 12, 31)) is None
    assert CART.in_force_on(date(2026, 1, 31)).version == 1  # type: ignore[union-attr]
    assert CART.in_force_on(date(2026, 2, 1)).version == 2  # type: ignore[union-attr]


def spec(version: int, *limits: SpecLimit) -> ProductSpecification:
    return ProductSpecification(
        product_code="P", version=version, effective_from=date(2026, version, 1), limits=limits
    )


def test_diff_names_added_removed_tightened_and_loosened_tests() -> None:
    old = spec(
        1,
        SpecLimit(test_code="VIAB", unit="%", lower=70.0),
        SpecLimit(test_code="ENDO", unit="[EU]/mL", upper=5.0),
        SpecLimit(test_code="STER", allowed_text=("negative",)),
        SpecLimit(test_code="OLD", unit="%", lower=1.0),
    )
    new = spec(
        2,
        SpecLimit(test_code="VIAB", unit="%", lower=75.0),
        SpecLimit(test_code="ENDO", unit="[EU]/mL", upper=10.0),
        SpecLimit(test_code="STER", allowed_text=("negative", "not done")),
        SpecLimit(test_code="RCL", allowed_text=("not detected",)),
    )
    changes = {(c.test_code, c.change) for c in diff_specifications(old, new)}
    assert changes == {
        ("VIAB", "tightened"),
        ("ENDO", "loosened"),
        ("STER", "loosened"),
        ("RCL", "added"),
        ("OLD", "removed"),
    }


def test_catalog_versions_1_to_2_of_the_car_t_product() -> None:
    changes = diff_specifications(CART.version(1), CART.version(2))
    assert SpecChange("VIAB", "tightened", "[70, inf] % -> [75, inf] %") in changes
    assert any(c.test_code == "RCL" and c.change == "added" for c in changes)


def test_specs_cli() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["specs", "diff", "SBX-CART-01", "1", "2"])
    assert result.exit_code == 0
    assert "VIAB" in result.stdout and "tightened" in result.stdout
    in_force = runner.invoke(app, ["specs", "in-force", "SBX-CART-01", "2026-03-01"])
    assert in_force.exit_code == 0 and "version 2" in in_force.stdout
    before = runner.invoke(app, ["specs", "in-force", "SBX-CART-01", "2020-01-01"])
    assert before.exit_code == 1
