"""The avx feature store: schema v2 (``docs/store.md``), reading, writing, validation."""

from avx.store_schema.labels import RaterLabels, derive_rater_labels
from avx.store_schema.reader import FeatureStore, Stream, list_streams, open_store
from avx.store_schema.spec import SCHEMA_VERSION, Status
from avx.store_schema.validate import ValidationReport, validate_store
from avx.store_schema.writer import StreamSpec, StreamWriter, consolidate, create_store

__all__ = [
    "SCHEMA_VERSION",
    "FeatureStore",
    "RaterLabels",
    "Status",
    "Stream",
    "StreamSpec",
    "StreamWriter",
    "ValidationReport",
    "consolidate",
    "create_store",
    "derive_rater_labels",
    "list_streams",
    "open_store",
    "validate_store",
]
