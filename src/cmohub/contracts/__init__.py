"""Data contracts (ODCS v3), product specifications, and validation against them.

What other parts of the hub call::

    from cmohub.contracts.store import load_contract, load_contracts, load_product_catalog
    from cmohub.contracts.arrow import to_arrow_schema, rows_to_table
    from cmohub.contracts.validate import validate_table
    from cmohub.contracts.quarantine import write_quarantine, save_report
    from cmohub.contracts.diff import diff_contracts, diff_contract_sets

    contract = load_contract("manufacturing.batch")          # ODCS file -> Contract
    schema = to_arrow_schema(contract)                       # the Parquet schema
    outcome = validate_table(rows, contract, run_id=run_id, feed=feed, as_of=now,
                             upstream=mapping_result.quarantine_entries())
    outcome.report / outcome.valid / outcome.quarantined     # report, Arrow table, rejects
    write_quarantine(lake, outcome.quarantined, feed=feed, day=day, run_id=run_id)
    save_report(lake, outcome.report)

Modules: ``model`` (the hub's Contract values and the classification scale), ``odcs`` (the one
adapter of ``open-data-contract-standard``), ``store`` (loading, I/O), ``lint``, ``checks``
(contract -> checks), ``gx`` (the one adapter of Great Expectations), ``arrow``, ``validate``,
``report``, ``quarantine`` (writing, I/O), ``diff``, ``specifications``.
"""
