"""Settings from arguments, a config file or ``ASIF_*`` environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from asif_index.errors import ConfigError


_ENCODERS: dict[tuple, tuple] = {}


class AsifSettings(BaseSettings):
    """Everything a run needs to know; each field can come from ``ASIF_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="ASIF_", extra="forbid")

    text_encoder: str = "default"
    image_encoder: str = "default"
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    k: int = Field(800, ge=1, le=1_000_000)
    p: float = Field(8.0, gt=0, le=64, allow_inf_nan=False)
    # Encoder batch; None: 256 on a GPU (large batches keep it busy), 64 on a CPU.
    batch_size: int | None = Field(None, ge=1, le=65536)
    cache_dir: Path = Path.home() / ".cache" / "asif-index"
    backend: Literal["qdrant", "milvus", "memory"] = "qdrant"
    url: str | None = None
    path: Path | None = None
    api_key: str | None = None
    collection: str = "asif"
    # Largest query entries sent to the database (None: all k). All, by default: keeping 400
    # lost 0.3% of text->image Recall@10 against the ground truth (section 4), but against the
    # exact top-10 it kept only 0.97 / 0.81 / 0.90 of it for text->image / image->text /
    # image->image (benchmarks/sparse_options.py, section 8); only the full query kept >= 0.99
    # in every direction. Set it for speed when a direction's loss is acceptable.
    query_keep: int | None = Field(None, ge=1)
    # Embedded Qdrant: how the relative vectors are stored (float32 exact; float16/uint8 smaller)
    sparse_datatype: Literal["float32", "float16", "uint8"] = "float32"
    # Clustered databases (servers only): shards and replicas of the collections an index
    # creates, and the replicas that acknowledge a Qdrant write (connectors.cluster)
    shard_number: int = Field(1, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=16)
    write_consistency_factor: int = Field(1, ge=1, le=16)
    # Database calls: one request, reaching the server, and all retries of one operation.
    request_timeout: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False)
    connect_timeout: float = Field(10.0, gt=0, le=3600, allow_inf_nan=False)
    retry_budget: float = Field(60.0, ge=0, le=86400, allow_inf_nan=False)
    # Images declaring more pixels than this are skipped (decompression bombs).
    max_image_pixels: int = Field(50_000_000, ge=64, le=2_000_000_000)

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, v: Path) -> Path:
        if v.exists() and not v.is_dir():
            raise ValueError(f"'{v}' is a file, not a folder; name a folder for the embedding "
                             "cache (it is created when missing)")
        return v

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
                data = json.loads(p.read_text(encoding="utf-8"))
            except UnicodeDecodeError as exc:
                raise ConfigError(f"config file '{p}' is not UTF-8 text (byte {exc.start}); save "
                                  "it as UTF-8 JSON") from exc
            except json.JSONDecodeError as exc:
                raise ConfigError(f"config file '{p}' is not valid JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise ConfigError(f"config file '{p}' must hold a JSON object of settings")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(describe_validation(exc, config_file)) from exc

    def cache(self):
        from asif_index.encoders.cache import EmbeddingCache

        return EmbeddingCache(self.cache_dir / "embeddings.sqlite")

    def for_index(self, manifest) -> "AsifSettings":
        """These settings with the encoders an index was made with (its manifest's
        ``encoder_specs``, or what its encoder names say) wherever the user set none
        (flag, config file, environment): an index keeps its encoders when the default
        changes. An encoder set explicitly is kept, and the manifest check then names any
        mismatch."""
        from asif_index.encoders.registry import stored_encoder_specs

        specs = stored_encoder_specs(manifest.extra, manifest.image_encoder,
                                     manifest.text_encoder)
        update = {f"{m}_encoder": spec for m, spec in specs.items()
                  if spec is not None and f"{m}_encoder" not in self.model_fields_set}
        return self.model_copy(update=update) if update else self

    def encoders(self):
        """(image encoder, text encoder) built from the specs, sharing the cache. Built once
        per process for the same specs (a service or a test suite opens many indexes)."""
        key = (self.image_encoder, self.text_encoder, self.device, self.batch_size,
               str(self.cache_dir))
        if key not in _ENCODERS:
            _ENCODERS[key] = self._build_encoders()
        from asif_index.encoders.image import set_max_image_pixels

        set_max_image_pixels(self.max_image_pixels)
        return _ENCODERS[key]

    def _build_encoders(self):
        from asif_index.encoders import image_encoder_from_spec, text_encoder_from_spec
        from asif_index.encoders.image import set_max_image_pixels

        set_max_image_pixels(self.max_image_pixels)

        dev = None if self.device == "auto" else self.device
        cache = self.cache()
        kw = dict(device=dev, batch_size=self.batch_size, cache=cache)
        return image_encoder_from_spec(self.image_encoder, **kw), text_encoder_from_spec(
            self.text_encoder, **kw
        )


def describe_validation(exc: "ValidationError", config_file=None) -> str:
    """A pydantic error as one line: which setting, what value, what is allowed."""
    parts = []
    for e in exc.errors():
        field = ".".join(str(x) for x in e.get("loc", ())) or "settings"
        flag = "--" + field.replace("_", "-")
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "..."
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            src = f" in config file '{config_file}'" if config_file else ""
            parts.append(f"unknown setting '{field}'{src}; see 'asif-index --help' for the "
                         "settings")
        else:
            parts.append(f"{flag} (ASIF_{field.upper()}) = {shown}: {msg}")
    return "invalid settings: " + "; ".join(parts)
