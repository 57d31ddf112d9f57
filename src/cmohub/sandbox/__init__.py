"""The sandbox: a synthetic cell-therapy program, in every source's own wire format.

``cmohub sandbox generate`` (:func:`cmohub.sandbox.generate.generate_program`) writes FHIR,
HL7 v2, EPCIS, courier, CMO (CSV and BatchML) and master-data files for N synthetic patients,
with planted faults and canary identifiers listed in ``truth.json``. The world model
(:mod:`~cmohub.sandbox.program`, :mod:`~cmohub.sandbox.faults`, :mod:`~cmohub.sandbox.world`)
is pure; :mod:`~cmohub.sandbox.writers` render it; ``docs/sandbox.md`` documents every file.
"""
