"""Product master data and versioned release specifications (pure).

One YAML document per product under ``contracts/specifications/`` holds the product (its
temperature classes, excursion budget and vein-to-vein target) and every version of its
release specification, each in force from ``effective_from`` until the next version's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from typing import Any

from pydantic import ValidationError

from cmohub.domain import Product, ProductSpecification, SpecLimit
from cmohub.errors import ContractError


@dataclass(frozen=True, slots=True)
class ProductCatalogEntry:
    """A product with all versions of its release specification, oldest first."""

    product: Product
    specifications: tuple[ProductSpecification, ...]

    def in_force_on(self, day: date) -> ProductSpecification | None:
        """The specification version in force on ``day``, or None before the first one."""
        return specification_in_force(self.specifications, day)

    def version(self, number: int) -> ProductSpecification:
        for spec in self.specifications:
            if spec.version == number:
                return spec
        raise ContractError(
            f"product {self.product.product_code} has no specification version {number}",
            code="SPEC_VERSION_UNKNOWN",
        )


def specification_in_force(
    specifications: Sequence[ProductSpecification], day: date
) -> ProductSpecification | None:
    """The version whose [effective_from, effective_to) contains ``day``."""
    found = None
    for spec in specifications:
        if spec.effective_from <= day and (spec.effective_to is None or day < spec.effective_to):
            found = spec
    return found


def parse_product_document(document: Mapping[str, Any], *, where: str) -> ProductCatalogEntry:
    """Build a catalog entry from one parsed YAML document; check that versions chain."""
    if not isinstance(document, Mapping) or "product" not in document:
        raise ContractError(
            "expected keys 'product' and 'specifications'", code="SPEC_INVALID", where=where
        )
    try:
        product = Product.model_validate(document["product"])
        specs = tuple(
            ProductSpecification.model_validate({"product_code": product.product_code, **raw})
            for raw in document.get("specifications") or ()
        )
    except ValidationError as error:
        first = error.errors(include_input=False)[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ContractError(f"{first['msg']} at {path}", code="SPEC_INVALID", where=where) from None
    if not specs:
        raise ContractError("no specification versions", code="SPEC_INVALID", where=where)
    ordered = tuple(sorted(specs, key=lambda s: s.effective_from))
    for earlier, later in pairwise(ordered):
        if later.version <= earlier.version:
            raise ContractError(
                f"version {later.version} is effective after version {earlier.version}",
                code="SPEC_VERSION_ORDER",
                where=where,
            )
        if earlier.effective_to != later.effective_from:
            raise ContractError(
                f"version {earlier.version} must end (effective_to) when version "
                f"{later.version} starts",
                code="SPEC_VERSION_GAP",
                where=where,
            )
    return ProductCatalogEntry(product=product, specifications=ordered)


# --- comparing two versions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpecChange:
    """One difference between two versions of a release specification."""

    test_code: str
    change: str  # added, removed, tightened, loosened, unit_changed, required_changed, changed
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"test_code": self.test_code, "change": self.change, "detail": self.detail}


def _range(limit: SpecLimit) -> str:
    low = "-inf" if limit.lower is None else f"{limit.lower:g}"
    high = "inf" if limit.upper is None else f"{limit.upper:g}"
    unit = f" {limit.unit}" if limit.unit else ""
    return f"[{low}, {high}]{unit}"


def _criterion(limit: SpecLimit) -> str:
    if limit.allowed_text is not None:
        return "one of " + ", ".join(limit.allowed_text)
    return _range(limit)


def _compare_limits(old: SpecLimit, new: SpecLimit) -> list[SpecChange]:
    code = new.test_code
    changes: list[SpecChange] = []
    if old.unit != new.unit:
        changes.append(SpecChange(code, "unit_changed", f"unit {old.unit} -> {new.unit}"))
    if old.required != new.required:
        changes.append(
            SpecChange(
                code,
                "required_changed",
                "now required for release" if new.required else "no longer required for release",
            )
        )
    if (old.allowed_text is None) != (new.allowed_text is None):
        changes.append(SpecChange(code, "changed", f"{_criterion(old)} -> {_criterion(new)}"))
        return changes
    if old.allowed_text is not None and new.allowed_text is not None:
        before, after = set(old.allowed_text), set(new.allowed_text)
        if before == after:
            return changes
        if after < before:
            kind = "tightened"
        elif after > before:
            kind = "loosened"
        else:
            kind = "changed"
        changes.append(SpecChange(code, kind, f"{_criterion(old)} -> {_criterion(new)}"))
        return changes
    tightened = loosened = False
    if old.lower != new.lower:
        if new.lower is not None and (old.lower is None or new.lower > old.lower):
            tightened = True
        else:
            loosened = True
    if old.upper != new.upper:
        if new.upper is not None and (old.upper is None or new.upper < old.upper):
            tightened = True
        else:
            loosened = True
    if tightened or loosened:
        kind = "changed" if tightened and loosened else "tightened" if tightened else "loosened"
        changes.append(SpecChange(code, kind, f"{_range(old)} -> {_range(new)}"))
    return changes


def diff_specifications(old: ProductSpecification, new: ProductSpecification) -> list[SpecChange]:
    """Tests added or removed, limits tightened or loosened, from ``old`` to ``new``."""
    before = {limit.test_code: limit for limit in old.limits}
    after = {limit.test_code: limit for limit in new.limits}
    changes: list[SpecChange] = []
    for code in sorted(before.keys() - after.keys()):
        changes.append(SpecChange(code, "removed", f"was {_criterion(before[code])}"))
    for code in sorted(after.keys() - before.keys()):
        changes.append(SpecChange(code, "added", _criterion(after[code])))
    for code in sorted(before.keys() & after.keys()):
        changes.extend(_compare_limits(before[code], after[code]))
    return changes
