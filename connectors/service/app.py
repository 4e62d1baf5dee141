"""The HTTP service: search, classify, explain and stats over an :class:`Index`.

    asif-index serve --path ./db --image-root ./photos       # or create_app(index, settings)

Built on ``Index`` only (never on a store). Every error is JSON ``{"error", "detail"}``: input
problems 422, refused paths 403, unknown items 404, a busy or unreachable database 409 / 503,
a database that did not keep a write 507, a bug 500.
"""

# no "from __future__ import annotations": FastAPI reads the route annotations at runtime,
# and they name classes imported inside create_app

import logging
import os
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from asif_index.methods.unified import DEFAULT_IMAGE_WEIGHT
from asif_index._optional import require
from asif_index.errors import (
    AnchorError,
    AsifError,
    BackendUnavailableError,
    CollectionError,
    ConfigError,
    ConsistencyError,
    InputError,
    ModalityError,
    StorageError,
)
from connectors import filters, timing
from connectors.service.auth import KeyRing
from connectors.service.images import ImageMissing, PathRefused, resolve_under, thumbnail
from connectors.service.jobs import Job, JobManager
from connectors.service.metrics import Metrics
from connectors.service.models import (
    AnchorAddRequest,
    AnchorContribution,
    AnchorPage,
    AnchorRow,
    AnchorRemoveRequest,
    ClassifyResponse,
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    Health,
    Hit,
    IngestJobRequest,
    Prediction,
    RebuildRequest,
    SearchRequest,
    SearchResponse,
    SourceRequest,
    Upload,
)
from connectors.service.operations import make_runner, source_items
from connectors.service.settings import ServiceSettings

log = logging.getLogger("asif_index.service")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


STATUS = [(StorageError, 507), (PathRefused, 403), (ImageMissing, 404), (InputError, 422),
          (ModalityError, 422),
          (AnchorError, 422),
          (CollectionError, 404), (BackendUnavailableError, 503), (ConsistencyError, 409),
          (ConfigError, 400), (AsifError, 400)]


def create_app(index, settings: ServiceSettings | None = None, *,
               jobs_dir: str | Path | None = None, rebuild: Callable | None = None):
    """A FastAPI app serving ``index`` (a :class:`connectors.index.Index`).

    jobs_dir: where jobs and their checkpoints persist (jobs left unfinished there are resumed
        at start); default a temporary folder, so nothing resumes.
    rebuild: ``rebuild(index, k, p) -> (new index, items)`` for the rebuild job (the caller
        knows where a new physical index goes and how the alias switches); None: refused."""
    require("fastapi", "the HTTP service")  # its install hint before the imports below
    from fastapi import Depends, File, Form, HTTPException, Query, Request, Security, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

    s = settings or ServiceSettings()
    keys = KeyRing(s.read_keys, s.admin_keys)
    if keys.empty and not s.allow_anonymous:
        raise ConfigError("no API key configured: set ASIF_SERVE_READ_KEYS / ASIF_SERVE_ADMIN_KEYS "
                          "(comma-separated), or allow_anonymous for a loopback demo")
    metrics = Metrics()
    lock = threading.Lock()
    last_refresh = [0.0]
    holder = {"index": index}  # a rebuild job swaps in the new index
    index.prepare()  # engines and query banks now, not in the first searches
    manager_ref: list[JobManager] = []
    # where jobs and thumbnails may read images: the configured roots, and the service's own
    # store of images sent to it (added once the jobs folder is known)
    roots: list[Path] = list(s.image_roots)
    from connectors.pipeline.fetch import FetchLimits, needs_fetch

    fetch_limits = (FetchLimits(max_bytes=s.fetch_max_bytes, timeout_s=s.fetch_timeout_s)
                    if s.fetch_urls else None)
    jobs = JobManager(jobs_dir or tempfile.mkdtemp(prefix="asif-jobs-"),
                      make_runner(holder, roots, manager_ref, rebuild, fetch_limits))
    manager_ref.append(jobs)
    uploads = jobs.dir / "uploads"
    uploads.mkdir(exist_ok=True)
    image_store = (uploads / "images").resolve()
    image_store.mkdir(exist_ok=True)
    roots.append(image_store)
    # Swagger UI and ReDoc from files in the fastapi-offline package: /docs renders with no
    # network (FastAPI's own pages load them from a CDN)
    offline = require("fastapi_offline", "offline API docs (/docs, /redoc)")
    app = offline.FastAPIOffline(
        title="asif-index", version="0.1.0",
        description="Training-free multimodal search (ASIF relative vectors) on Qdrant or "
                    "Milvus. Send an API key as `X-API-Key` (or `Authorization: Bearer`); read "
                    "keys search, admin keys also change the index.",
        responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                   422: {"model": ErrorResponse}})
    if s.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=s.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"])

    header_key = APIKeyHeader(name="X-API-Key", auto_error=False)
    bearer = HTTPBearer(auto_error=False)

    def role(need: str):
        def check(key: str | None = Security(header_key),
                  cred: HTTPAuthorizationCredentials | None = Security(bearer)) -> str:
            if keys.empty and s.allow_anonymous:
                return "admin"
            got = keys.role(key or (cred.credentials if cred else None))
            if got is None:
                raise HTTPException(401, "missing or wrong API key: send it as X-API-Key",
                                    headers={"WWW-Authenticate": "Bearer"})
            if need == "admin" and got != "admin":
                raise HTTPException(403, "this route needs an admin key; the key given is a "
                                         "read key")
            return got
        return check

    reader = Depends(role("read"))
    admin = Depends(role("admin"))

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        with timing.recording() as stages:
            response = await call_next(request)
        total = time.perf_counter() - t0
        route = request.scope.get("route")
        metrics.observe(request.method, getattr(route, "path", "unmatched"),
                        response.status_code, total)
        if stages:  # the request ran stages (encode, project, search): say what each took
            response.headers["Server-Timing"] = timing.server_timing(stages, total)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException):
        return JSONResponse({"error": "HTTPError", "detail": exc.detail}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(_, exc):
        return JSONResponse({"error": "HTTPError", "detail": exc.detail}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return JSONResponse({"error": "ValidationError", "detail": "; ".join(parts)}, 422)

    for cls, code in STATUS:
        def handler(_, exc, code=code):
            return JSONResponse({"error": type(exc).__name__, "detail": one_line(exc)}, code)
        app.add_exception_handler(cls, handler)

    @app.exception_handler(OSError)
    async def os_error(_, exc: OSError):
        # a path the request named (too long, a folder, unreadable): the client's input
        return JSONResponse({"error": "InputError", "detail": one_line(exc)}, 422)

    @app.exception_handler(Exception)
    async def internal(_, exc: Exception):
        log.exception("internal error")
        return JSONResponse({"error": "InternalError", "detail": f"{type(exc).__name__}: "
                             f"{one_line(exc)[:300]} (a bug: the service log has the "
                             "traceback)"}, 500)

    # -- helpers --------------------------------------------------------------------------
    def fresh():
        """Follow anchor updates made by other processes, at most every ``refresh_s``,
        without making a request wait for it: one background thread loads and prepares the
        new version while every request goes on with the current one (still pinned and
        complete), then the index adopts it in one step."""
        idx = holder["index"]
        now = time.monotonic()
        if now - last_refresh[0] >= s.refresh_s and lock.acquire(blocking=False):
            last_refresh[0] = now

            def refresh() -> None:
                try:
                    idx.refresh()
                except Exception:  # the next request's refresh tries again
                    log.exception("refreshing the anchor version failed")
                finally:
                    last_refresh[0] = time.monotonic()
                    lock.release()

            threading.Thread(target=refresh, name="asif-refresh", daemon=True).start()
        return idx

    def item_thumb(payload: dict, item_id: str) -> str | None:
        if not payload.get("path"):
            return None
        return f"/items/{item_id}/thumbnail"

    def read_upload(f: UploadFile) -> bytes:
        data = f.file.read(s.max_upload_bytes + 1)
        if len(data) > s.max_upload_bytes:
            raise HTTPException(413, f"upload '{f.filename}' is over the {s.max_upload_bytes} "
                                     "byte limit (ASIF_SERVE_MAX_UPLOAD_BYTES)")
        if not data:
            raise HTTPException(422, f"upload '{f.filename}' is empty")
        return data

    def form_qbnorm(value: str | None):
        """The upload form's qbnorm field as Index.search's (None, True, False or T)."""
        if value is None or not value.strip():
            return None
        v = value.strip().lower()
        if v in ("on", "true"):
            return True
        if v in ("off", "false"):
            return False
        try:
            t = float(v)
        except ValueError:
            t = float("nan")
        if not 0 < t <= 10:
            raise HTTPException(422, f"qbnorm must be 'on', 'off' or a temperature in (0, 10]; "
                                f"got {value!r}")
        return t

    def explanation(ex) -> ExplainResponse:
        return ExplainResponse(score=ex.score, similarity=ex.similarity,
                               temperature=ex.temperature, log_z=ex.log_z, anchors=[
            AnchorContribution(**a, thumbnail_url=(f"/anchors/{a['anchor_id']}/thumbnail"
                                                   if s.image_roots and a["image_ref"] else None))
            for a in ex.anchors])

    def form_filter(text: str | None):
        """An upload form's filter field (JSON text) as a filter object; 422 as a bad
        /search filter is."""
        from connectors.service.image_uploads import _json_object

        try:
            return _json_object(text, "filter", "conditions, as /search's filter")
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None

    def hits_out(hits) -> list[Hit]:
        return [Hit(id=h.id, score=h.score, modality=h.modality, payload=h.payload,
                    similarity=h.score if h.similarity is None else h.similarity,
                    thumbnail_url=item_thumb(h.payload, h.id)) for h in hits]

    def query_filter(req_filter, modality: str | None):
        """The request's filter, validated (a FilterError answers 422), with its modality."""
        return filters.with_modality(filters.parse(req_filter or None), modality)

    def check_text(text: str | None) -> None:
        if text is not None and len(text) > s.max_text_chars:
            raise HTTPException(422, f"text is over {s.max_text_chars} characters")

    # -- routes ---------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz(response: Response) -> Health:
        """Database reachable and anchors loaded (no key needed: for load balancers)."""
        try:
            fresh().store.read_manifest()
            ok, detail = True, ""
        except AsifError as exc:
            ok, detail = False, str(exc)
        if not ok:
            response.status_code = 503
        idx = holder["index"]
        return Health(status="ok" if ok else "unavailable", database=ok,
                      anchors=len(idx.anchors), anchor_version=idx.version, detail=detail)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"],
             dependencies=[reader])
    def prometheus() -> str:
        """Prometheus text: request counts and latency histograms by route."""
        idx = holder["index"]
        metrics.gauges["asif_anchors"] = len(idx.anchors)
        metrics.gauges["asif_anchor_version"] = idx.version
        metrics.gauges["asif_jobs_active"] = jobs.active
        return metrics.render()

    @app.post("/search", response_model=SearchResponse, tags=["search"], dependencies=[reader])
    def search(req: SearchRequest) -> SearchResponse:
        """Items ranked for a text, an image path under the roots, or a stored item."""
        idx = fresh()
        check_text(req.text)
        if req.limit > s.max_limit:
            raise HTTPException(422, f"limit is over {s.max_limit}")
        flt = query_filter(req.filter, req.modality)
        if req.item_id is not None:
            # query and items on one anchor version, even while an update job lands
            res = idx.similar(req.item_id, req.limit, flt, req.query_keep, exact=req.exact,
                              candidates=req.candidates, offset=req.offset)
            return SearchResponse(query="item", anchor_version=res.anchor_version,
                                  hits=hits_out(res.hits))
        image = resolve_under(req.image_path, s.image_roots) if req.image_path else None
        return answer(idx.search_result(text=req.text, image=image, limit=req.limit,
                                        filter=flt, qbnorm=req.qbnorm,
                                        query_keep=req.query_keep, exact=req.exact,
                                        candidates=req.candidates, offset=req.offset))

    def answer(res) -> SearchResponse:
        return SearchResponse(query=res.query, anchor_version=res.anchor_version,
                              hits=hits_out(res.hits), qbnorm=res.qbnorm)

    @app.post("/search/image", response_model=SearchResponse, tags=["search"],
              dependencies=[reader])
    def search_image(file: UploadFile = File(..., description="an image file"),
                     limit: int = Form(10, ge=1, le=1000),
                     offset: int = Form(0, ge=0, le=9999),
                     modality: str | None = Form(None, pattern="^(image|text)$"),
                     text: str | None = Form(None, max_length=2000, description=(
                         "with the image: a composed query, e.g. 'at night'")),
                     image_weight: float = Form(DEFAULT_IMAGE_WEIGHT, gt=0, lt=1, description=(
                         "the image's share of a composed query")),
                     qbnorm: str | None = Form(None, description=(
                         "query-bank normalisation: unset, the index's default; a "
                         "temperature, or 'on' for the recipe's; 'off': the plain ranking")),
                     filter: str | None = Form(None, description=(
                         "payload conditions as /search's filter, in JSON text"))
                     ) -> SearchResponse:
        """Items ranked for an uploaded image, or for the image composed with a text."""
        idx = fresh()
        qb = form_qbnorm(qbnorm)
        user_filter = form_filter(filter)
        data = read_upload(file)
        if text is not None:
            check_text(text)
            if qb not in (None, False):
                raise HTTPException(422, "qbnorm re-ranks single-modality queries; drop it "
                                    "(or set it 'off') for a composed query")
        return answer(idx.search_result(text=text, image=data, limit=min(limit, s.max_limit),
                                        filter=query_filter(user_filter, modality),
                                        image_weight=image_weight, qbnorm=qb, offset=offset))

    @app.post("/explain/image", response_model=ExplainResponse, tags=["search"],
              dependencies=[reader])
    def explain_image(file: UploadFile = File(..., description="the query image"),
                      item_id: str = Form(...), top: int = Form(10, ge=1, le=200),
                      qbnorm: str | None = Form(None, description="as /search/image's")
                      ) -> ExplainResponse:
        """/explain for an uploaded image query (what /search/image ranked)."""
        idx = fresh()
        ex = idx.explain(item_id, image=read_upload(file), top=top, qbnorm=form_qbnorm(qbnorm))
        return explanation(ex)

    @app.get("/anchors", response_model=AnchorPage, tags=["anchors"], dependencies=[reader])
    def anchors_list(grep: str | None = Query(None, max_length=200, description=(
                         "only captions holding this text (case-insensitive)")),
                     source: str | None = Query(None, max_length=256),
                     offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)
                     ) -> AnchorPage:
        """The live anchors (id, caption, source), optionally narrowed, a page at a time."""
        a = fresh().anchors
        rows = [(int(i), pl) for i, pl in zip(a.ids.tolist(), a.payloads)
                if (not grep or grep.lower() in pl.caption.lower())
                and (source is None or pl.source == source)]
        return AnchorPage(anchor_version=a.manifest.version, total=len(rows), anchors=[
            AnchorRow(id=i, caption=pl.caption, source=pl.source or "",
                      thumbnail_url=(f"/anchors/{i}/thumbnail"
                                     if s.image_roots and pl.image_ref else None))
            for i, pl in rows[offset:offset + limit]])

    @app.post("/classify", response_model=ClassifyResponse, tags=["search"],
              dependencies=[reader])
    def classify(files: list[UploadFile] = File(..., description="image files"),
                 labels: str = Form("", description="comma-separated labels (zero-shot)",
                                    examples=["cat,dog,car"]),
                 head: str | None = Form(None, pattern="^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                                         description=("a head trained on text only "
                                                      "(`asif-index train-text-classifier`) "
                                                      "instead of labels"))
                 ) -> ClassifyResponse:
        """Labels of uploaded images with every label's score: zero-shot from ``labels``, or
        from a text-trained ``head`` kept beside the index (scores are its probabilities)."""
        if head:
            if labels.strip():
                raise HTTPException(422, "give labels or head, not both")
            if len(files) > s.max_batch:
                raise HTTPException(422, f"at most {s.max_batch} files per request")
            idx = fresh()
            th = idx.text_head(head)
            emb = idx.encoders["image"].encode([read_upload(f) for f in files])
            pred, probs = idx.classify_with_head(emb, th)
            return ClassifyResponse(predictions=[
                Prediction(file=f.filename or f"#{i}", label=p,
                           scores={n: float(v) for n, v in zip(th.labels, probs[i])})
                for i, (f, p) in enumerate(zip(files, pred))])
        names = [x.strip() for x in labels.split(",") if x.strip()]
        if len(names) < 2:
            raise HTTPException(422, "give at least two comma-separated labels")
        if len(names) > s.max_batch or len(files) > s.max_batch:
            raise HTTPException(422, f"at most {s.max_batch} labels and files per request")
        data = [read_upload(f) for f in files]
        pred, scores = fresh().classify(data, names)
        return ClassifyResponse(predictions=[
            Prediction(file=f.filename or f"#{i}", label=p,
                       scores={n: float(v) for n, v in zip(names, scores[i])})
            for i, (f, p) in enumerate(zip(files, pred))])

    @app.post("/locate", tags=["search"], dependencies=[reader],
              responses={200: {"content": {"image/png": {}},
                               "description": "the photo with the heat map over it; headers "
                                              "X-Peak-X and X-Peak-Y give the maximum"}})
    def locate(file: UploadFile = File(..., description="a photo"),
               text: str = Form(..., min_length=1, max_length=2000,
                                description="what to find, e.g. 'a dog'")) -> Response:
        """Where in the photo is what the text describes: crops scored in the relative
        space, drawn as a heat map over the photo (PNG)."""
        import io as _io

        from asif_index.methods.locate import overlay

        check_text(text)
        data = read_upload(file)
        hm = fresh().locate(data, text)
        buf = _io.BytesIO()
        overlay(data, hm.values).save(buf, format="PNG")
        x, y = hm.peak
        return Response(buf.getvalue(), media_type="image/png",
                        headers={"X-Peak-X": str(x), "X-Peak-Y": str(y)})

    @app.post("/explain", response_model=ExplainResponse, tags=["search"], dependencies=[reader])
    def explain(req: ExplainRequest) -> ExplainResponse:
        """The anchor pairs behind an (item, query) score, largest contribution first."""
        idx = fresh()
        check_text(req.text)
        image = resolve_under(req.image_path, s.image_roots) if req.image_path else None
        ex = idx.explain(req.item_id, text=req.text, image=image, top=req.top,
                         qbnorm=req.qbnorm)
        return explanation(ex)

    @app.get("/stats", tags=["index"], dependencies=[reader])
    def stats() -> dict[str, Any]:
        """Counts, anchor version, encoders, k and p."""
        return fresh().stats()

    @app.get("/anchors/status", tags=["anchors"], dependencies=[reader])
    def anchors_status() -> dict[str, Any]:
        """Live anchor version and any pending or interrupted update."""
        from connectors.updates import status

        return status(fresh().store)

    def jpeg(path) -> Response:
        try:
            return Response(thumbnail(path), media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=3600"})
        except InputError as exc:
            raise HTTPException(422, str(exc)) from exc

    @app.get("/items/{item_id}/thumbnail", tags=["images"], dependencies=[reader],
             response_class=Response)
    def item_thumbnail(item_id: str) -> Response:
        """A thumbnail of a stored image item (its recorded path, under the roots only)."""
        rec = fresh().item(item_id)
        ref = rec.payload.get("path")
        if not ref:
            raise HTTPException(404, f"item '{item_id}' has no image path")
        from connectors.image_roots import resolve, roots_of

        # a path under a named root resolves against where the index says the root is now
        path = resolve(rec.payload, roots_of(fresh().store) if "root" in rec.payload else {})
        return jpeg(resolve_under(str(path), roots))

    @app.get("/anchors/{anchor_id}/thumbnail", tags=["images"], dependencies=[reader],
             response_class=Response)
    def anchor_thumbnail(anchor_id: int) -> Response:
        """A thumbnail of an anchor's image (its image reference, under the roots only)."""
        idx = fresh()
        rows = np.flatnonzero(idx.anchors.ids == anchor_id)
        if not rows.size:
            raise HTTPException(404, f"no anchor {anchor_id} at version {idx.version}")
        ref = idx.anchors.payloads[int(rows[0])].image_ref
        if not ref:
            raise HTTPException(404, f"anchor {anchor_id} has no image reference")
        return jpeg(resolve_under(ref, s.image_roots))

    page = (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def ui() -> str:
        """The web page (no key needed to load it; every call it makes sends the key)."""
        return page

    # -- jobs (admin) -------------------------------------------------------------------
    def checked_source(req: SourceRequest, metadata: bool = False) -> dict:
        params = req.model_dump(exclude_none=True)
        # bad paths (403/404), columns or fields (422) fail now, not in the job
        items = source_items(params, roots, uploads, metadata)
        if fetch_limits is None and needs_fetch(items):
            raise HTTPException(422, f"table '{params.get('captions')}' names images by URL, "
                                     "and this service downloads none (fetch_urls is off); "
                                     "send the images (POST /jobs/ingest/images) instead")
        if metadata:
            from connectors.pipeline.metadata import field_name, source_name

            for k in params.get("payload", {}):
                field_name(k, f"payload['{k}']")
            source_name(params.get("source"), "x")
        return params

    @app.post("/uploads", response_model=Upload, tags=["jobs"], dependencies=[admin])
    def upload(file: UploadFile = File(..., description="a captions table or texts file")
               ) -> Upload:
        """Store a table for a later job; returns the handle to give the job (as its
        ``captions`` or ``texts``)."""
        data = read_upload(file)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(file.filename or "table").name)[-80:]
        if not safe.lower().endswith((".csv", ".tsv", ".jsonl", ".txt", ".parquet")):
            raise HTTPException(422, f"'{file.filename}': upload a .csv, .tsv, .jsonl, .txt or "
                                     ".parquet table")
        handle = f"u-{uuid.uuid4().hex}"  # opaque: no server path leaves the service
        tmp = uploads / f".{handle}"
        tmp.write_bytes(data)
        os.replace(tmp, uploads / f"{handle}-{safe}")
        return Upload(handle=handle, name=safe, bytes=len(data))

    @app.post("/jobs/ingest", response_model=Job, status_code=202, tags=["jobs"],
              dependencies=[admin])
    def ingest_job(req: IngestJobRequest) -> Job:
        """Embed, project and store items from a source; poll ``GET /jobs/{id}``."""
        return jobs.submit("ingest", {**checked_source(req, True), "modality": req.modality})

    @app.post("/jobs/ingest/images", response_model=Job, status_code=202, tags=["jobs"],
              dependencies=[admin])
    def ingest_images_job(
            files: list[UploadFile] = File(..., description="the images (JPEG, PNG, WebP, "
                                           "GIF, BMP, TIFF), each within the upload limit"),
            metadata: str | None = Form(None, description="JSON: {file name: {field: "
                                        "value}} for some or all of the files"),
            source: str | None = Form(None, max_length=256, description="every item's "
                                      "'source' (default 'upload')"),
            payload: str | None = Form(None, description="JSON: fields for every item")
            ) -> Job:
        """Index images sent in the request: the whole batch is checked (sizes, decodable
        images, metadata) before anything is kept, each image is stored once by content
        hash under the service's data root, then an ingest job runs as for a folder."""
        from connectors.pipeline.metadata import source_name
        from connectors.service.image_uploads import (MAX_FILES, parse_metadata,
                                                      parse_payload, store_batch)

        if len(files) > MAX_FILES:
            raise HTTPException(413, f"a batch holds at most {MAX_FILES} images; got "
                                     f"{len(files)}")
        sent = [(Path(f.filename or f"file{i}").name, read_upload(f))
                for i, f in enumerate(files)]
        meta = parse_metadata(metadata, [n for n, _ in sent])
        fields = parse_payload(payload)
        label = source_name(source, "upload")
        handle = store_batch(sent, meta, image_store, uploads / "batches")
        return jobs.submit("ingest", {"upload_batch": handle, "modality": "image", "source": label,
                                      "payload": fields})

    @app.post("/jobs/anchors/add", response_model=Job, status_code=202, tags=["jobs"],
              dependencies=[admin])
    def anchors_add_job(req: AnchorAddRequest) -> Job:
        """Add image-caption pairs as anchors (stored items re-projected exactly, live)."""
        return jobs.submit("anchors_add", {**checked_source(req), "batch": req.batch})

    @app.post("/jobs/anchors/remove", response_model=Job, status_code=202, tags=["jobs"],
              dependencies=[admin])
    def anchors_remove_job(req: AnchorRemoveRequest) -> Job:
        """Remove anchors by id (stored items re-projected exactly, live)."""
        holder["index"].anchors.rows_of(np.asarray(req.ids))  # unknown ids: 422 now
        return jobs.submit("anchors_remove", {"ids": sorted(set(req.ids))})

    @app.post("/jobs/anchors/rebuild", response_model=Job, status_code=202, tags=["jobs"],
              dependencies=[admin])
    def rebuild_job(req: RebuildRequest) -> Job:
        """Re-project everything into a new index (new k, p) and switch to it."""
        if rebuild is None:
            raise HTTPException(501, "this service was started without a rebuild target; "
                                     "run 'asif-index anchors rebuild' instead")
        return jobs.submit("anchors_rebuild", req.model_dump())

    @app.delete("/items/{item_id}", tags=["index"], dependencies=[admin])
    def delete_item(item_id: str) -> dict[str, Any]:
        """Delete a stored item (readers pinned at an older anchor version keep their view)."""
        n = fresh().delete_items([item_id])
        if not n:
            raise HTTPException(404, f"no item '{item_id}' in the index")
        return {"deleted": n}

    @app.get("/jobs", response_model=list[Job], tags=["jobs"], dependencies=[reader])
    def list_jobs() -> list[Job]:
        """Every job, newest first."""
        return jobs.list()

    @app.get("/jobs/{job_id}", response_model=Job, tags=["jobs"], dependencies=[reader])
    def get_job(job_id: str) -> Job:
        """State, progress (done / total), skipped inputs with reasons, final figures."""
        j = jobs.get(job_id)
        if j is None:
            raise HTTPException(404, f"no job '{job_id}'")
        return j

    @app.delete("/jobs/{job_id}", response_model=Job, tags=["jobs"], dependencies=[admin])
    def cancel_job(job_id: str) -> Job:
        """Cancel a queued job, or stop a running one at its next batch (resumable state)."""
        j = jobs.cancel(job_id)
        if j is None:
            raise HTTPException(404, f"no job '{job_id}'")
        return j

    app.state.metrics, app.state.settings, app.state.jobs = metrics, s, jobs

    def wait_idle(timeout: float = 60.0) -> bool:
        """Wait for a background refresh in flight (call before closing the store: a
        refresh reading a closed engine would fail, or abort in the engine at exit)."""
        if lock.acquire(timeout=timeout):
            lock.release()
            return True
        return False

    app.state.wait_idle = wait_idle
    app.state.resumed_jobs = jobs.start()
    return app
