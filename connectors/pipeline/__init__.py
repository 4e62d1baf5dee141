"""Ingestion: reader -> (fetcher) -> embedder -> projector -> writer, with batching, retries
and resume."""

from connectors.pipeline.fetch import FetchLimits, fetch_items
from connectors.pipeline.ingest import IngestSummary, ingest_anchors, ingest_items
from connectors.pipeline.readers import (
    SourceItem,
    read_captions_table,
    read_image_folder,
    read_texts,
    read_webdataset,
)

__all__ = [
    "FetchLimits",
    "IngestSummary",
    "fetch_items",
    "SourceItem",
    "ingest_anchors",
    "ingest_items",
    "read_captions_table",
    "read_image_folder",
    "read_texts",
    "read_webdataset",
]
