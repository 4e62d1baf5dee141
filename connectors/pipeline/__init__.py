"""Ingestion: reader -> embedder -> projector -> writer, with batching, retries and resume."""

from connectors.pipeline.ingest import IngestSummary, ingest_anchors, ingest_items
from connectors.pipeline.readers import (
    SourceItem,
    read_captions_table,
    read_image_folder,
    read_texts,
    read_webdataset,
)

__all__ = [
    "IngestSummary",
    "SourceItem",
    "ingest_anchors",
    "ingest_items",
    "read_captions_table",
    "read_image_folder",
    "read_texts",
    "read_webdataset",
]
