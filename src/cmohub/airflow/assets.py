"""Airflow Assets the hub's DAGs produce and wait for.

An ingest DAG's last task names its feed's asset as an outlet; ``nightly_reconciliation`` is
scheduled by time *and* by these assets, so it runs as soon as every feed has delivered (or at
its cron time, whichever comes first).
"""

from __future__ import annotations

from airflow.sdk import Asset

ASSET_SCHEME = "cmohub"

#: Asset names of the sync DAGs that are not generated from CMO feed mappings.
CLINICAL = "clinical"
LOGISTICS = "logistics"


def asset_for(name: str) -> Asset:
    """The asset a feed (or a sync DAG) updates when it has staged new data."""
    return Asset(name=f"cmohub.{name}", uri=f"{ASSET_SCHEME}://staged/{name}")


def ingest_assets() -> list[Asset]:
    """Every asset an ingest DAG updates: clinical, logistics and one per CMO feed."""
    from cmohub.sources.delivery import load_cmo_feeds

    return [asset_for(CLINICAL), asset_for(LOGISTICS)] + [
        asset_for(name) for name in sorted(load_cmo_feeds())
    ]
