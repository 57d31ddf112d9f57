"""Pure parsers and serializers of wire formats (functional core: bytes in, values out).

Each third-party format library has exactly one adapter module here, which turns the library's
objects and exceptions into ours: ``fhir`` (fhir.resources), ``hl7v2`` (hl7apy). Modules of
other formats (EPCIS, B2MML, ...) live beside them.

:func:`format_readers` gives the mapping engine the readers it cannot have itself
(:func:`cmohub.mapping.read_records` ``extra_readers``): ``fhir`` resolves each resource's
subject from the Patients in the same payload, ``hl7v2`` splits messages and answers
:class:`~cmohub.mapping.paths.Hl7Record`. The heavy libraries are imported only when a reader
is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cmohub.mapping.readers import Reader


def format_readers() -> dict[str, Reader]:
    """Readers by mapping source format, for ``read_records(..., extra_readers=...)``."""
    from cmohub.formats.epcis import read_epcis_records  # noqa: PLC0415 - lazy, like the others
    from cmohub.formats.fhir import read_fhir_records  # noqa: PLC0415 - heavy: fhir.resources
    from cmohub.formats.hl7v2 import read_hl7_records  # noqa: PLC0415 - heavy: hl7apy

    return {"fhir": read_fhir_records, "hl7v2": read_hl7_records, "epcis": read_epcis_records}
