"""Frozen unimodal encoders behind one interface."""

from asif_index.encoders.base import EncodeResult, Encoder
from asif_index.encoders.cache import EmbeddingCache
from asif_index.encoders.registry import image_encoder_from_spec, text_encoder_from_spec

__all__ = [
    "EmbeddingCache",
    "EncodeResult",
    "Encoder",
    "image_encoder_from_spec",
    "text_encoder_from_spec",
]
