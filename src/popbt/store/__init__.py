"""Storage: the abstract contract and its one SQLAlchemy implementation."""

from ..errors import NotFound, StoreError
from .base import (
    ACTIVE,
    DONE,
    FAILED,
    IN_DATABASE,
    PENDING,
    RUNNING,
    SCHEMA_VERSION,
    WAITING,
    Checkpoint,
    CheckpointState,
    Event,
    Experiment,
    ExperimentStatus,
    Exploit,
    Head,
    LeaseLost,
    Outcome,
    Progress,
    Rejected,
    Result,
    Row,
    Store,
    Task,
)
from .sql import SQLStore, mask_url


def open_store(url: str) -> SQLStore:
    """Open (and on first use, create) the popbt tables at a SQLAlchemy URL."""
    return SQLStore(url)


__all__ = [
    "ACTIVE",
    "WAITING",
    "CheckpointState",
    "ExperimentStatus",
    "DONE",
    "FAILED",
    "IN_DATABASE",
    "PENDING",
    "RUNNING",
    "SCHEMA_VERSION",
    "Checkpoint",
    "Event",
    "Experiment",
    "Exploit",
    "Head",
    "LeaseLost",
    "NotFound",
    "Outcome",
    "Progress",
    "Rejected",
    "Result",
    "Row",
    "Store",
    "StoreError",
    "Task",
    "SQLStore",
    "mask_url",
    "open_store",
]
