"""Request and response models: the service's documentation (see /docs and /openapi.json)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator



class SearchRequest(BaseModel):
    """Exactly one of ``text``, ``image_path`` (an image the server may read, under its
    configured roots) or ``item_id`` (a stored item: "more like this")."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, min_length=1, examples=["a dog running on the beach"])
    image_path: str | None = Field(None, examples=["/data/photos/beach.jpg"])
    item_id: str | None = Field(None, description="an id a previous search returned")
    modality: Literal["image", "text"] | None = Field(None, description="only items of it")
    filter: dict[str, Any] = Field(
        default_factory=dict, examples=[{"label": "dog"}, {"year": {"gte": 2010},
                                                           "album": ["alps", "beach"]}],
        description="payload conditions, ANDed: field: value (a list: any of them), field: "
        "{op: value} with op eq, ne, in, nin, gt, gte, lt, lte, exists; and/or/not take "
        "lists of filters. Field names: letters, digits, '_' and '-'")
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=9999, description="skip this many hits: the next page "
                        "(order: score desc, then item id; offset + limit <= 10000)")
    query_keep: int | Literal["all"] | None = Field(
        None, description="largest query entries sent to the database (default: the index's)")
    exact: bool = Field(False, description="one exact stage over every item instead of the "
                        "two-stage search (candidates, then exact rescoring)")
    candidates: int | None = Field(None, ge=1, le=16384, description="the first stage's "
                                   "candidate count (default: chosen by collection size)")
    # StrictBool: a temperature of 1 stays 1.0, not true
    qbnorm: Union[StrictBool, Annotated[float, Field(gt=0, le=10)], None] = Field(
        None, examples=[0.05, False], description="query-bank normalisation (folded into the "
        "index: every item's normaliser is stored; docs/evaluation.md). Unset: the index recipe's default (the tuned recipe re-ranks "
        "results that are all of the other modality, T=0.05); a temperature, or true for the "
        "recipe's: re-rank whatever the results' modality; false: the plain ranking. "
        "Either way each hit's score is a relevance in [0, 1]")

    @model_validator(mode="after")
    def _one_query(self):
        given = [x for x in (self.text, self.image_path, self.item_id) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, image_path or item_id")
        if self.qbnorm not in (None, False) and self.item_id is not None:
            raise ValueError("qbnorm re-ranks a text or image_path query; drop it for an "
                             "item_id query")
        if isinstance(self.query_keep, int) and self.query_keep < 1:
            raise ValueError("query_keep must be a positive integer or 'all'")
        return self


SCORE_DOC = ("relevance in [0, 1], what the hits are ranked by: the similarity itself for "
             "a plain ranking; exp(s/T) / (exp(s/T) + Z(x)) for a query-bank normalised "
             "one, the query's share of the item's matches against the bank's queries")


class Hit(BaseModel):
    id: str
    # no ge/le: a float32 dot product of an item with itself can read 1.0000001
    score: float = Field(description=SCORE_DOC + " (up to float32 rounding)")
    modality: str
    payload: dict[str, Any]
    similarity: float = Field(description="the relative vectors' dot product s, in [0, 1]")
    thumbnail_url: str | None = Field(None, description="set when the item has a readable image")


class SearchResponse(BaseModel):
    query: Literal["text", "image", "item", "composed"]
    anchor_version: int
    hits: list[Hit]
    qbnorm: float | None = Field(None, description="the temperature the hits were re-ranked "
                                 "at by query-bank normalisation (null: the plain ranking)")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str
    text: str | None = Field(None, min_length=1)
    image_path: str | None = None
    top: int = Field(10, ge=1, le=200)
    qbnorm: Union[StrictBool, Annotated[float, Field(gt=0, le=10)], None] = Field(
        None, description="as /search's: the score decomposed as that search ranks it")

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


class AnchorRow(BaseModel):
    id: int = Field(description="the id 'anchors remove' takes")
    caption: str
    source: str
    thumbnail_url: str | None = None


class AnchorPage(BaseModel):
    anchor_version: int
    total: int = Field(description="anchors matching grep / source (all pages)")
    anchors: list[AnchorRow]


class ExplainResponse(BaseModel):
    score: float = Field(description=SCORE_DOC + " (the hit's score in /search)")
    similarity: float = Field(description="s: the sum of every shared anchor's contribution")
    temperature: float | None = Field(None, description="T of a normalised score (null: "
                                      "score = similarity)")
    log_z: float | None = Field(None, description="the item's query-bank normaliser log Z(x): "
                                "score = 1 / (1 + exp(log_z - s/T))")
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


class SourceRequest(BaseModel):
    """Where a job reads from: a captions table (a path under the image roots, or the handle
    ``POST /uploads`` returned) with the folder its image paths are relative to (or image
    URLs, which the service downloads); or an image folder; or a texts file (a path or a
    handle)."""

    model_config = ConfigDict(extra="forbid")
    captions: str | None = Field(None, examples=["u-3f2a9c0d1e2b4a5f8c7d6e5f4a3b2c1d",
                                                 "tables/captions.tsv"])
    images: str | None = Field(None, description="folder the table's image paths are relative to")
    folder: str | None = Field(None, description="an image folder (sub-folders = labels)")
    texts: str | None = Field(None, description="a text file, one item per line, or a table")

    @model_validator(mode="after")
    def _one_source(self):
        if sum(x is not None for x in (self.captions, self.folder, self.texts)) != 1:
            raise ValueError("give exactly one of captions, folder or texts")
        return self


class IngestJobRequest(SourceRequest):
    modality: Literal["image", "text", "both"] = "image"
    source: str | None = Field(None, min_length=1, max_length=256, examples=["crawl-2026-11"],
                               description="every item's 'source' field (default: the "
                               "input's file or folder name); filter or delete by it")
    payload: dict[str, Union[StrictBool, int, float, str]] = Field(
        default_factory=dict, examples=[{"album": "alps", "year": 2024}],
        description="fields set on every item (an item's own metadata wins)")
    columns: list[str] | None = Field(None, description="a captions table's columns kept as "
                                      "fields (default: all but image, caption and split)")


class AnchorAddRequest(SourceRequest):
    batch: int = Field(4096, ge=1, le=100_000, description="pairs per anchor update")


class AnchorRemoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(min_length=1, max_length=100_000)


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(None, ge=1, le=1_000_000)
    p: float | None = Field(None, gt=0, le=64)


class Upload(BaseModel):
    handle: str = Field(description="pass it as a job's 'captions' or 'texts'",
                        examples=["u-3f2a9c0d1e2b4a5f8c7d6e5f4a3b2c1d"])
    name: str = Field(description="the file name as stored (unsafe characters replaced)")
    bytes: int
