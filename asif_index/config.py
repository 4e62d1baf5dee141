"""Settings from arguments, a config file or ``ASIF_*`` environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from asif_index.errors import ConfigError


class AsifSettings(BaseSettings):
    """Everything a run needs to know; each field can come from ``ASIF_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="ASIF_", extra="forbid")

    text_encoder: str = "default"
    image_encoder: str = "default"
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    k: int = Field(800, ge=1)
    p: float = Field(8.0, gt=0)
    batch_size: int = Field(64, ge=1)
    cache_dir: Path = Path.home() / ".cache" / "asif-index"
    backend: Literal["qdrant", "milvus", "memory"] = "qdrant"
    url: str | None = None
    path: Path | None = None
    api_key: str | None = None
    collection: str = "asif"
    # Largest query entries sent to the database (None: all k). The default is the smallest
    # size that lost < 1% Recall@10 in benchmarks/pruning.py (docs/benchmarks.md, section 4).
    query_keep: int | None = Field(400, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError("device must be auto, cpu or cuda[:N]")
        return v

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides) -> "AsifSettings":
        """Defaults < environment < config file (JSON) < explicit overrides (None ignored).

        The file and the overrides are init arguments, which pydantic-settings ranks above
        ``ASIF_*`` environment variables."""
        data: dict = {}
        if config_file:
            p = Path(config_file)
            if not p.is_file():
                raise ConfigError(f"config file '{p}' does not exist")
            try:
                data = json.loads(p.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"config file '{p}' is not valid JSON: {exc}") from exc
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValueError as exc:
            raise ConfigError(f"invalid settings: {exc}") from exc

    def cache(self):
        from asif_index.encoders.cache import EmbeddingCache

        return EmbeddingCache(self.cache_dir / "embeddings.sqlite")

    def encoders(self):
        """(image encoder, text encoder) built from the specs, sharing the cache."""
        from asif_index.encoders import image_encoder_from_spec, text_encoder_from_spec

        dev = None if self.device == "auto" else self.device
        cache = self.cache()
        kw = dict(device=dev, batch_size=self.batch_size, cache=cache)
        return image_encoder_from_spec(self.image_encoder, **kw), text_encoder_from_spec(
            self.text_encoder, **kw
        )
