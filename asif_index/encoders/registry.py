"""Encoder spec strings, as used in config files and on the command line.

Text:  ``default`` (all-MiniLM-L6-v2, offline package) | ``hf:/path/to/model_dir``
Image: ``default`` (the EfficientNet-Lite0+Lite1+Lite2 ensemble, offline packages: +7.9
       points CIFAR-10 zero-shot and +6.5 T2I R@10 over Lite0 alone on the held-out dev
       half, docs/evaluation.md) | ``light`` (EfficientNet-Lite0 alone: 4-6x faster
       to encode on a CPU, a third of the raw bytes) | ``efficientnet-lite0`` | ``efficientnet-lite1`` |
       ``efficientnet-lite2`` | ``timm:<model>:<weights file>`` | ``hf:/path/to/model_dir``
Either: an ensemble ``A+B`` or ``A*0.3+B*0.7`` of specs of one modality
(:mod:`asif_index.encoders.ensemble`).

Every encoder built here carries ``spec``, the canonical spec that builds it again; an index
stores it (manifest ``encoder_specs``) so that opening it later builds its own encoders, not
today's default (:func:`stored_encoder_specs`).
"""

from __future__ import annotations

from typing import Any

from asif_index.encoders.base import Encoder
from asif_index.errors import ConfigError

DEFAULT_TEXT = "default"
DEFAULT_IMAGE = "default"
ENCODER_SPECS_KEY = "encoder_specs"  # manifest.extra: {"image": spec, "text": spec}

LITE_ENSEMBLE = "efficientnet-lite0+efficientnet-lite1+efficientnet-lite2"
# spec aliases that name the same encoder
_IMAGE_ALIASES = {"default": LITE_ENSEMBLE, "light": "efficientnet-lite0"}
_TEXT_ALIASES = {"all-MiniLM-L6-v2": "default", "minilm": "default"}


def _canonical(spec: str, aliases: dict[str, str]) -> str:
    spec = aliases.get(spec, spec)
    if "+" in spec:
        from asif_index.encoders.ensemble import parse_members

        return "+".join(f"{_canonical(n, aliases)}*{w:.6g}" for n, w in parse_members(spec))
    return spec


def canonical_image_spec(spec: str) -> str:
    """A spec with its aliases resolved ('default' -> its encoders) and ensemble weights
    written out, for comparing and storing specs."""
    return _canonical(spec, _IMAGE_ALIASES)


def canonical_text_spec(spec: str) -> str:
    """:func:`canonical_image_spec` for text specs."""
    return _canonical(spec, _TEXT_ALIASES)


def spec_of_name(name: str, modality: str) -> str | None:
    """The spec that builds the encoder a manifest names (its identity, digest or not), or
    None where the name cannot say it (a timm or hf model folder: its path is not in the
    name). For indexes made before manifests stored specs."""
    from asif_index.encoders.identity import base_name

    if name.startswith("ensemble[") and name.endswith("]"):
        parts = []
        for member in _split_members(name[len("ensemble["):-1]):
            inner, _, w = member.rpartition("*")
            spec = spec_of_name(inner, modality)
            if spec is None or not w:
                return None
            parts.append(f"{spec}*{w}")
        return "+".join(parts)
    name = base_name(name)
    if modality == "text":
        return "default" if name == "all-MiniLM-L6-v2" else None
    from asif_index.encoders.image import EFFICIENTNET_LITE

    for variant in EFFICIENTNET_LITE:
        if name == variant + "-imagenet" or name.startswith(variant + "-imagenet-"):
            return variant
    return None


def _split_members(text: str) -> list[str]:
    """'a*0.5,b[x,y]*0.5' -> ['a*0.5', 'b[x,y]*0.5']: commas outside brackets."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def stored_encoder_specs(extra: dict, image_name: str, text_name: str) -> dict[str, str | None]:
    """{"image": spec, "text": spec} an index was made with: what its manifest stored, else
    what its encoder names say (None where they cannot)."""
    doc = extra.get(ENCODER_SPECS_KEY) or {}
    return {"image": doc.get("image") or spec_of_name(image_name, "image"),
            "text": doc.get("text") or spec_of_name(text_name, "text")}


def _ensemble(spec: str, build, **kwargs: Any) -> Encoder:
    from asif_index.encoders.ensemble import EnsembleEncoder, parse_members

    return EnsembleEncoder([(build(name, **kwargs), w) for name, w in parse_members(spec)])


def text_encoder_from_spec(spec: str, **kwargs: Any) -> Encoder:
    enc = _text_encoder(spec, **kwargs)
    enc.spec = canonical_text_spec(spec)
    return enc


def _text_encoder(spec: str, **kwargs: Any) -> Encoder:
    if "+" in spec:
        return _ensemble(spec, text_encoder_from_spec, **kwargs)
    from asif_index.encoders.text import HFTextEncoder, default_text_encoder

    if canonical_text_spec(spec) == "default":
        return default_text_encoder(**kwargs)
    if spec.startswith("hf:"):
        return HFTextEncoder(spec[3:], **kwargs)
    raise ConfigError(
        f"unknown text encoder spec '{spec}'; use 'default' or 'hf:/path/to/model_dir'"
    )


def image_encoder_from_spec(spec: str, **kwargs: Any) -> Encoder:
    enc = _image_encoder(_IMAGE_ALIASES.get(spec, spec), **kwargs)
    enc.spec = canonical_image_spec(spec)
    return enc


def _image_encoder(spec: str, **kwargs: Any) -> Encoder:
    if "+" in spec:
        return _ensemble(spec, image_encoder_from_spec, **kwargs)
    from asif_index.encoders.image import (EFFICIENTNET_LITE, HFImageEncoder, TimmImageEncoder,
                                           efficientnet_lite)

    if spec in EFFICIENTNET_LITE:
        return efficientnet_lite(spec, **kwargs)
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
        f"unknown image encoder spec '{spec}'; use 'default', 'light', 'efficientnet-lite0', "
        "'efficientnet-lite1', 'efficientnet-lite2', 'timm:<model>:<weights>', "
        "'hf:/path/to/model_dir', or an ensemble 'A+B'"
    )
