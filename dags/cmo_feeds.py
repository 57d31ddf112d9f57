"""One ingest DAG per CMO feed (``cmo_acme``, ``cmo_borealis``, ...), generated from mappings/.

Each CMO feed's mappings name the feed and its files in ``source.options`` (transport, folder,
pinned sender fingerprint, size limit, checksum convention, schedule); adding a mapping with a
new ``feed`` adds a DAG. Tasks: fetch → verify → stage → alert; the last one updates the feed's
Asset (``cmohub.<feed>``) that the nightly reconciliation waits for. See
``cmohub.airflow.factory`` and ``cmohub.pipelines.cmo``.
"""

from __future__ import annotations

from cmohub.airflow.factory import cmo_feed_dags

for _dag_id, _dag in cmo_feed_dags().items():
    globals()[_dag_id] = _dag
