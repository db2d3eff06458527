"""Reading upstream materialisations: which checkpoint, which run, which data version.

Dagster records on every materialisation the tags `dagster/input_data_version/<upstream>` and
`dagster/input_event_pointer/<upstream>`; the assets also copy the upstream sha256 and run id into
their own metadata so people can find them in the UI. `latest_upstream` is how an asset finds the
checkpoint it must read (instead of "the latest file on disk").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import dagster as dg


@dataclass(frozen=True)
class Upstream:
    """One upstream materialisation: its run, event storage id, data version and metadata values."""

    asset: str
    partition: Optional[str]
    run_id: str
    storage_id: int
    data_version: Optional[str]
    metadata: dict[str, Any]

    def as_metadata(self, prefix: str) -> dict[str, Any]:
        """Metadata entries recording this upstream (`<prefix>_run_id`, ...)."""
        out: dict[str, Any] = {
            f"{prefix}_run_id": dg.MetadataValue.dagster_run(self.run_id),
            f"{prefix}_event_storage_id": self.storage_id,
        }
        if self.data_version:
            out[f"{prefix}_data_version"] = self.data_version
        return out


def latest_upstream(instance: dg.DagsterInstance, asset: str,
                    partition: Optional[str] = None) -> Upstream:
    """The latest materialisation of `asset` (partition); a clear error if there is none."""
    key = dg.AssetKey(asset)
    records_filter = dg.AssetRecordsFilter(
        asset_key=key, asset_partitions=[partition] if partition is not None else None)
    records = instance.fetch_materializations(records_filter, limit=1).records
    if not records:
        where = f" partition {partition!r}" if partition is not None else ""
        raise dg.Failure(f"{asset}{where} has never been materialised: materialise it first")
    record = records[0]
    mat = record.asset_materialization
    assert mat is not None
    metadata = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return Upstream(asset=asset, partition=partition, run_id=record.run_id,
                    storage_id=record.storage_id, data_version=mat.tags.get("dagster/data_version"),
                    metadata=metadata)
