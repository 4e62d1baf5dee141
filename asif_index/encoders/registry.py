"""Encoder spec strings, as used in config files and on the command line.

Text:  ``default`` (all-MiniLM-L6-v2, offline package) | ``hf:/path/to/model_dir``
Image: ``default`` (EfficientNet-Lite0, offline package) | ``timm:<model>:<weights file>``
       | ``hf:/path/to/model_dir``
"""

from __future__ import annotations

from typing import Any

from asif_index.encoders.base import Encoder
from asif_index.errors import ConfigError

DEFAULT_TEXT = "default"
DEFAULT_IMAGE = "default"


def text_encoder_from_spec(spec: str, **kwargs: Any) -> Encoder:
    from asif_index.encoders.text import HFTextEncoder, default_text_encoder

    if spec in ("default", "all-MiniLM-L6-v2", "minilm"):
        return default_text_encoder(**kwargs)
    if spec.startswith("hf:"):
        return HFTextEncoder(spec[3:], **kwargs)
    raise ConfigError(
        f"unknown text encoder spec '{spec}'; use 'default' or 'hf:/path/to/model_dir'"
    )


def image_encoder_from_spec(spec: str, **kwargs: Any) -> Encoder:
    from asif_index.encoders.image import HFImageEncoder, TimmImageEncoder, default_image_encoder

    if spec in ("default", "efficientnet-lite0"):
        return default_image_encoder(**kwargs)
    if spec.startswith("timm:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[2]:
            raise ConfigError(
                f"timm spec '{spec}' needs a weights file: 'timm:<model>:<weights>' (models "
                "cannot be downloaded at run time)"
            )
        return TimmImageEncoder(parts[1], parts[2], **kwargs)
    if spec.startswith("hf:"):
        return HFImageEncoder(spec[3:], **kwargs)
    raise ConfigError(
        f"unknown image encoder spec '{spec}'; use 'default', 'timm:<model>:<weights>' or "
        "'hf:/path/to/model_dir'"
    )
