"""Service settings (environment ``ASIF_SERVE_*`` or keyword arguments)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What the HTTP service allows. Keys are never logged; compare with :class:`KeyRing`.

    ``read_keys`` may search, classify, explain and read stats; ``admin_keys`` may also ingest,
    change anchors and delete. With no key configured at all the service refuses to start
    unless ``allow_anonymous`` is set (a loopback demo), so a deployment cannot be left open by
    forgetting a variable."""

    model_config = SettingsConfigDict(env_prefix="ASIF_SERVE_", extra="forbid")

    # NoDecode: the environment gives "a,b" (split below), not JSON
    read_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allow_anonymous: bool = False
    # Images the service may read by path (queries by path, thumbnails): only under these roots.
    image_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    max_upload_bytes: int = Field(10 * 2**20, ge=1024)
    # A job's table may name images by http(s) URL: the service downloads each (admins only
    # submit jobs), bounded in bytes and seconds; off for a service that must not reach out.
    fetch_urls: bool = True
    fetch_max_bytes: int = Field(20 * 2**20, ge=1024)
    fetch_timeout_s: float = Field(20.0, gt=0, le=600)
    max_batch: int = Field(256, ge=1, le=100_000)  # labels, ids, texts per request
    max_limit: int = Field(1000, ge=1, le=1000)
    max_text_chars: int = Field(2000, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)  # off unless listed
    refresh_s: float = Field(1.0, ge=0)  # how often searches look for a new anchor version

    @field_validator("read_keys", "admin_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, v):
        # ASIF_SERVE_READ_KEYS=a,b (or a JSON list)
        if isinstance(v, str) and not v.lstrip().startswith("["):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("image_roots", mode="before")
    @classmethod
    def _path_list(cls, v):
        if isinstance(v, str) and not v.lstrip().startswith("["):
            return [x for x in v.split(":") if x]
        return v

    @field_validator("image_roots")
    @classmethod
    def _resolved(cls, v: list[Path]) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in v]
