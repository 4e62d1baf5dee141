"""Request and response models: the service's documentation (see /docs and /openapi.json)."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

FilterValue = Union[str, int, float, bool]


class SearchRequest(BaseModel):
    """Exactly one of ``text``, ``image_path`` (an image the server may read, under its
    configured roots) or ``item_id`` (a stored item: "more like this")."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, min_length=1, examples=["a dog running on the beach"])
    image_path: str | None = Field(None, examples=["/data/photos/beach.jpg"])
    item_id: str | None = Field(None, description="an id a previous search returned")
    modality: Literal["image", "text"] | None = Field(None, description="only items of it")
    filter: dict[str, FilterValue] = Field(default_factory=dict,
                                           description="payload field = value, ANDed")
    limit: int = Field(10, ge=1, le=1000)
    query_keep: int | Literal["all"] | None = Field(
        None, description="largest query entries sent to the database (default: the index's)")

    @model_validator(mode="after")
    def _one_query(self):
        given = [x for x in (self.text, self.image_path, self.item_id) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, image_path or item_id")
        if isinstance(self.query_keep, int) and self.query_keep < 1:
            raise ValueError("query_keep must be a positive integer or 'all'")
        return self


class Hit(BaseModel):
    id: str
    score: float
    modality: str
    payload: dict[str, Any]
    thumbnail_url: str | None = Field(None, description="set when the item has a readable image")


class SearchResponse(BaseModel):
    query: Literal["text", "image", "item"]
    anchor_version: int
    hits: list[Hit]


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str
    text: str | None = Field(None, min_length=1)
    image_path: str | None = None
    top: int = Field(10, ge=1, le=200)

    @model_validator(mode="after")
    def _one_query(self):
        if (self.text is None) == (self.image_path is None):
            raise ValueError("give exactly one of text or image_path")
        return self


class AnchorContribution(BaseModel):
    anchor_id: int
    contribution: float = Field(description="query weight x item weight on this anchor")
    caption: str
    image_ref: str
    thumbnail_url: str | None = None


class ExplainResponse(BaseModel):
    score: float
    anchors: list[AnchorContribution]


class Prediction(BaseModel):
    file: str
    label: str
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    predictions: list[Prediction]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: bool
    anchors: int
    anchor_version: int
    detail: str = ""


class ErrorResponse(BaseModel):
    error: str = Field(description="the error class, e.g. InputError")
    detail: str
