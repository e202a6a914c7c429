"""An export in memory (`ExportBundle`) and the names of its configurations: what the writer and the card share."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from training.data import AcceptedData

AGGREGATED, RAW = "aggregated", "raw"
RAW_SPLIT = "train"
MARKER_TAG = "stance-workbench"  # the dataset card's tag on the Hub
# The file every export writes last: only a folder holding it may be replaced by another export. Not the card's tag,
# which model cards carry too (an export with --out models/<version> deleted the promoted model).
EXPORT_MARKER = ".workbench-export"


@dataclass
class ExportBundle:
    """An export in memory: both configurations, what the policy did, agreement figures, provenance."""

    aggregated: Any  # datasets.DatasetDict of the non-empty splits
    raw: Any  # datasets.DatasetDict with one split
    accepted: AcceptedData
    agreement: dict[str, Any]
    salt_source: str
    seed: int
    ratios: tuple[float, float, float]
    source: str = ""
    exported_at: str = field(default_factory=lambda: datetime.now().astimezone().isoformat(timespec="seconds"))

    @property
    def split_sizes(self) -> dict[str, int]:
        """Rows per aggregated split (non-empty splits only)."""
        return {name: len(part) for name, part in self.aggregated.items()}
