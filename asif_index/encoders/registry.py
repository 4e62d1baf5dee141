"""Encoder spec strings, as used in config files and on the command line.

Text:  ``default`` (all-MiniLM-L6-v2, offline package) | ``hf:/path/to/model_dir``
Image: ``default`` (EfficientNet-Lite0, offline package) | ``efficientnet-lite1`` |
       ``efficientnet-lite2`` (offline packages, extra ``[encoders]``) |
       ``timm:<model>:<weights file>`` | ``hf:/path/to/model_dir``
Either: an ensemble ``A+B`` or ``A*0.3+B*0.7`` of specs of one modality
(:mod:`asif_index.encoders.ensemble`).
"""

from __future__ import annotations

from typing import Any

from asif_index.encoders.base import Encoder
from asif_index.errors import ConfigError

DEFAULT_TEXT = "default"
DEFAULT_IMAGE = "default"


# spec aliases that name the same encoder
_IMAGE_ALIASES = {"default": "efficientnet-lite0"}


def canonical_image_spec(spec: str) -> str:
    """A spec with its aliases resolved ('default' -> its encoder), for comparing specs."""
    if "+" in spec:
        from asif_index.encoders.ensemble import parse_members

        return "+".join(f"{canonical_image_spec(n)}*{w:.6g}" for n, w in parse_members(spec))
    return _IMAGE_ALIASES.get(spec, spec)


def _ensemble(spec: str, build, **kwargs: Any) -> Encoder:
    from asif_index.encoders.ensemble import EnsembleEncoder, parse_members

    return EnsembleEncoder([(build(name, **kwargs), w) for name, w in parse_members(spec)])


def text_encoder_from_spec(spec: str, **kwargs: Any) -> Encoder:
    if "+" in spec:
        return _ensemble(spec, text_encoder_from_spec, **kwargs)
    from asif_index.encoders.text import HFTextEncoder, default_text_encoder

    if spec in ("default", "all-MiniLM-L6-v2", "minilm"):
        return default_text_encoder(**kwargs)
    if spec.startswith("hf:"):
        return HFTextEncoder(spec[3:], **kwargs)
    raise ConfigError(
        f"unknown text encoder spec '{spec}'; use 'default' or 'hf:/path/to/model_dir'"
    )


def image_encoder_from_spec(spec: str, **kwargs: Any) -> Encoder:
    if "+" in spec:
        return _ensemble(spec, image_encoder_from_spec, **kwargs)
    from asif_index.encoders.image import (EFFICIENTNET_LITE, HFImageEncoder, TimmImageEncoder,
                                           efficientnet_lite)

    if canonical_image_spec(spec) in EFFICIENTNET_LITE:
        return efficientnet_lite(canonical_image_spec(spec), **kwargs)
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
        f"unknown image encoder spec '{spec}'; use 'default', 'efficientnet-lite1', "
        "'efficientnet-lite2', 'timm:<model>:<weights>', 'hf:/path/to/model_dir', or an "
        "ensemble 'A+B'"
    )
