"""Compile a contract to the Arrow schema its Parquet files are written with (pure).

=============== ======================================================================
logical type    Arrow type
=============== ======================================================================
string          ``large_string`` (the storage of pandas 3 strings: no copy when staging)
integer         ``int64`` (``int32``/``int16``/``int8`` when ``logicalTypeOptions.format``
                says i32/i16/i8)
number          ``float64``
boolean         ``bool``
date            ``date32``
timestamp       ``timestamp[us, tz=UTC]`` (``timestamp[us]`` only with ``timezone: false``)
object          ``struct`` of its properties
=============== ======================================================================

A field is nullable unless the property is required. Each field's metadata carries the
property's description, classification and identity role; the schema's metadata carries the
contract id, version and content hash, so a Parquet file says which contract it was written
against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from cmohub.contracts.model import Contract, IdentityRole, LogicalType, PropertySpec
from cmohub.errors import ContractError

_INTEGER_FORMATS = {
    "i8": pa.int8(),
    "i16": pa.int16(),
    "i32": pa.int32(),
    "i64": pa.int64(),
}


def arrow_type(prop: PropertySpec) -> pa.DataType:
    """The Arrow type of one property."""
    kind = prop.logical_type
    if kind is LogicalType.STRING:
        return pa.large_string()
    if kind is LogicalType.INTEGER:
        # Unsigned and 128-bit formats are stored as int64: wide enough for every hub value.
        return _INTEGER_FORMATS.get(prop.integer_format or "i64", pa.int64())
    if kind is LogicalType.NUMBER:
        return pa.float64()
    if kind is LogicalType.BOOLEAN:
        return pa.bool_()
    if kind is LogicalType.DATE:
        return pa.date32()
    if kind is LogicalType.TIMESTAMP:
        return pa.timestamp("us", tz=None if prop.timezone is False else "UTC")
    if kind is LogicalType.OBJECT:
        if not prop.children:
            raise ContractError(
                f"object property {prop.name!r} declares no properties",
                code="CONTRACT_TYPE_UNSUPPORTED",
            )
        return pa.struct([arrow_field(child) for child in prop.children])
    raise ContractError(f"no Arrow type for {kind}", code="CONTRACT_TYPE_UNSUPPORTED")


def arrow_field(prop: PropertySpec) -> pa.Field:
    metadata = {
        "description": prop.description,
        "classification": prop.classification.value,
    }
    if prop.identity_role is not IdentityRole.NONE:
        metadata["identity_role"] = prop.identity_role.value
    if prop.unit is not None:
        metadata["unit"] = prop.unit
    return pa.field(prop.name, arrow_type(prop), nullable=not prop.required, metadata=metadata)


def to_arrow_schema(contract: Contract) -> pa.Schema:
    """The Arrow schema of ``contract``'s dataset, in property order."""
    fields = [arrow_field(prop) for prop in contract.properties]
    return pa.schema(
        fields,
        metadata={
            "cmohub.dataset": contract.dataset,
            "cmohub.contract_id": contract.id,
            "cmohub.contract_version": contract.version,
            "cmohub.contract_sha256": contract.content_sha256,
        },
    )


def rows_to_table(rows: Sequence[Mapping[str, Any]], contract: Contract) -> pa.Table:
    """Typed rows (e.g. validated mapping output) as a table with the contract's schema."""
    schema = to_arrow_schema(contract)
    try:
        return pa.Table.from_pylist(
            [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ContractError(
            f"rows do not fit the Arrow schema of {contract.dataset} ({type(error).__name__})",
            code="CONTRACT_TYPE",
            where=contract.dataset,
        ) from None
