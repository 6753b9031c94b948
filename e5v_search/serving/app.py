"""The HTTP API and the search page (FastAPI). Handlers only call the engine.

The engine is opened and the model loaded once, at start-up. Every model call goes through one
`ModelWorker` thread; index reads go through `ServedIndex`, each engine behind a lock (they
take milliseconds), which first follows what other processes committed (indexes.py).
Files are served only for items the catalog knows, by integer id; uploads are size- and
type-checked (uploads.py); the only files written are thumbnails inside the index directory.
Requests pass `RequestGuard` first: headers over 8 KiB get 431, a Host not allowed gets 400;
then, where origins were given, CORS on the read routes (cors.py). The OpenAI-compatible
routes under /v1 are openai_api.py's; clip-retrieval's (/knn-service, /metadata,
/indices-list) clip_api.py's, over every index served.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as FastPath
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel

from .. import errors
from ..config import HYBRID_WEIGHT, MAX_ID, MAX_UPLOAD_BYTES  # a larger id: 422, never 500
from ..errors import E5VSearchError
from ..filters import parse_filters
from ..results import Result
from . import clip_api, openai_api
from .cors import ReadRoutesCORS
from .guards import LOCAL_HOSTS, RequestGuard
from .indexes import Ranking, Served, ServedIndex
from .thumbnails import THUMBNAIL_SIZES
from .uploads import decode_image
from .worker import ModelWorker

STATIC = Path(__file__).parent / "static"
Modality = Literal["image", "text", "any"]
Mode = Literal["vector", "keyword", "hybrid"]  # config.SEARCH_MODES
MODE_HELP = "vector (cosine), keyword (BM25 of the words) or hybrid (both fused)"
MIN_SCORE_HELP = "Cut results scoring below this (the mode's score); `cut` says how many"


@dataclass
class ResultOut(Result):
    """A result as the engine returns it, with the URL of its thumbnail (images) and, when the
    search collapsed near-duplicates, the ids of this result's copies (best first)."""

    thumbnail: str | None = None
    copies: list[int] = field(default_factory=list)


class SearchOut(BaseModel):
    results: list[ResultOut]
    took_ms: float
    cut: int = 0  # how many of the k best `min_score` removed


def create_app(
    engine,
    *,
    others: Iterable = (),
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    thumbnail_cache_bytes: int = 256 * 2**20,
    text_cache_size: int = 1024,
    allowed_hosts: Iterable[str] | None = None,
    cors_origins: Iterable[str] = (),
    allow_remote_images: bool = False,
) -> FastAPI:
    """The app over an open engine. `allowed_hosts`: the names answered in the Host header
    (`guards.allowed_hosts` makes the set `serve` uses); None is localhost's names only.
    `cors_origins`: web origins whose pages may call the read routes (cors.py); none by
    default. `allow_remote_images`: /v1/embeddings and /knn-service may fetch http(s) image
    URLs. `others`: more engines on the same encoder, served to clip-retrieval's clients by
    name beside `engine`'s index (the page's and /api's)."""
    engines = [engine, *others]
    for each in engines:  # load the model now; refuse an index built with another one
        each.spec()
    app = FastAPI(
        title="e5v-search",
        description="Multimodal search with E5-V: texts and images in one vector space.",
        version="0.1.0",
        docs_url=None,  # /docs below, from this server's own copy of Swagger UI
        redoc_url=None,  # ReDoc comes only from a CDN
    )
    app.state.worker = ModelWorker(engine, cache_size=text_cache_size)
    indexes = Served(engines, thumbnail_cache_bytes)
    openai_api.register(
        app,
        engine,
        app.state.worker,
        max_upload_bytes=max_upload_bytes,
        allow_remote_images=allow_remote_images,
    )
    clip_api.register(
        app,
        indexes,
        app.state.worker,
        max_upload_bytes=max_upload_bytes,
        allow_remote_images=allow_remote_images,
    )
    if cors_origins:
        app.add_middleware(ReadRoutesCORS, origins=cors_origins)
    app.add_middleware(  # added last, so the outermost: a Host not allowed meets nothing else
        RequestGuard, allowed=LOCAL_HOSTS if allowed_hosts is None else allowed_hosts
    )

    @app.exception_handler(E5VSearchError)
    async def library_error(request: Request, error: E5VSearchError):
        return JSONResponse({"detail": str(error)}, status_code=status_of(error))

    _search_routes(app, indexes.default, app.state.worker, max_upload_bytes)
    _item_routes(app, indexes)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return (STATIC / "index.html").read_text()

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _docs_routes(app)
    return app


def _docs_routes(app: FastAPI) -> None:
    """/docs with Swagger UI's files from the swagger-ui-bundle package, served here: the docs
    work on a machine without internet (FastAPI's default loads them from a CDN)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path))

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="e5v-search API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from swagger.io
        )


COLLAPSE = (
    "Show near-identical results (a resized, re-encoded or rotated copy) once: each result's "
    "`copies` lists the ids of the others, and k such groups are returned where there are k"
)


def _search_routes(app: FastAPI, index: ServedIndex, worker: ModelWorker, max_upload_bytes: int):
    def answer(query, k, type, filters, text, ranking, collapse, started) -> SearchOut:
        vector, target = query
        groups = index.search(vector, type or target, k, filters, collapse, text, ranking)
        return _answer(groups, started)

    @app.get("/api/search", response_model=SearchOut, summary="Search by text or stored item")
    def search(
        q: str | None = Query(None, description="Query text", max_length=10_000),
        like: int | None = Query(None, ge=1, le=MAX_ID, description="Id of a stored item"),
        k: int = Query(10, ge=1, le=1000),
        type: Modality | None = Query(None, description="Results' modality [other than query's]"),
        meta: list[str] = Query([], description="KEY=VALUE metadata filters"),
        mode: Mode = Query("vector", description=MODE_HELP),
        min_score: float | None = Query(None, description=MIN_SCORE_HELP, allow_inf_nan=False),
        weight: float = Query(HYBRID_WEIGHT, ge=0, le=1, description="Hybrid: vector share"),
        collapse: bool = Query(False, description=COLLAPSE),
    ):
        started = time.perf_counter()
        filters = parse_filters(meta)
        ranking = Ranking(mode, min_score, weight)
        if (q is None) == (like is None):
            raise HTTPException(400, "give exactly one of q (a text) and like (an item id)")
        if like is not None:
            return _answer(index.like(like, k, type, filters, collapse, ranking), started)
        query = index.engine.query_vector(q, embedder=worker, mode=mode)
        return answer(query, k, type, filters, q, ranking, collapse, started)

    @app.post("/api/search/image", response_model=SearchOut, summary="Search by uploaded image")
    async def search_image(
        file: UploadFile = File(..., description="An image file"),
        text: str | None = Form(None, description="With an image: how to modify it (composed)"),
        k: int = Form(10, ge=1, le=1000),
        type: Modality | None = Form(None),
        meta: list[str] = Form([]),
        mode: Mode = Form("vector", description=MODE_HELP),
        min_score: float | None = Form(None, description=MIN_SCORE_HELP, allow_inf_nan=False),
        weight: float = Form(HYBRID_WEIGHT, ge=0, le=1, description="Hybrid: vector share"),
        collapse: bool = Form(False, description=COLLAPSE),
    ):
        started = time.perf_counter()
        image = await _read_upload(file, max_upload_bytes)
        filters = parse_filters(meta)
        ranking = Ranking(mode, min_score, weight)
        text = text if text and text.strip() else None
        query = index.engine.query_vector
        vector = await _in_thread(lambda: query(text, image, embedder=worker, mode=mode))
        args = (vector, k, type, filters, text, ranking, collapse, started)
        return await _in_thread(answer, *args)


def _item_routes(app: FastAPI, indexes: Served):
    first = indexes.default
    which = Query(None, description="Which served index (its folder's name); the first if none")

    @app.get("/api/items/{item_id}", summary="An item's metadata")
    def item(item_id: int = FastPath(ge=1, le=MAX_ID)):
        row = first.item(item_id)
        return {**row, "thumbnail": _thumb_url(row["id"], row["modality"])}

    @app.get("/api/info", summary="Counts, model spec, index types and sizes")
    def info():
        return first.info()

    @app.get("/api/health", summary="Liveness and what is loaded")
    def health():
        encoder = first.engine.encoder
        return {
            "status": "ok",
            "items": first.counts(),
            "model": encoder.model_id,
            "device": str(encoder.device),
        }

    @app.get("/api/recent", summary="The items stored last, newest first (the page's sample)")
    def recent(k: int = Query(12, ge=1, le=100), type: Literal["image", "text"] = "image"):
        rows = first.newest(k, type)
        return {"items": [{**row, "thumbnail": _thumb_url(row["id"], type)} for row in rows]}

    @app.get("/thumbs/{item_id}.jpg", summary="A thumbnail of a stored image")
    def thumbnail(
        item_id: int = FastPath(ge=1, le=MAX_ID), size: int = Query(256), index: str | None = which
    ):
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(400, f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}")
        served = indexes.get_index(index)
        row = served.item(item_id, image=True)
        try:
            path = served.thumbnails.get(row, size)
        except errors.InputError as error:
            raise HTTPException(404, f"image {item_id} cannot be read now: {error}") from error
        return FileResponse(
            path, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
        )

    @app.get("/files/{item_id}", summary="The original file of a stored image")
    def original(item_id: int = FastPath(ge=1, le=MAX_ID), index: str | None = which):
        row = indexes.get_index(index).item(item_id, image=True)
        if not Path(row["source"]).is_file():
            raise HTTPException(404, f"the file of item {item_id} is gone")
        return FileResponse(row["source"])


def status_of(error: E5VSearchError) -> int:
    """A library error as an HTTP status: the request's fault is a 4xx; the server's own state
    (a writer holding the lock, a damaged index, media it cannot write, a model that will not
    load) is a 503 with the message that says what to do; anything else is a real bug, 500."""
    servers = (
        errors.SpecMismatchError,
        errors.ModelLoadError,
        errors.IndexBusyError,
        errors.IndexDamagedError,
        errors.IndexWriteError,
        errors.IndexNotFoundError,
    )
    if isinstance(error, servers):
        return 503
    if isinstance(error, errors.InputError):
        return 400
    if isinstance(error, errors.EmbeddingError):
        return 422  # this input gives no finite vector
    return 500


def _answer(groups, started) -> SearchOut:
    """Groups of results (each a result and its copies) as the API answers them."""
    results = [_out(*group) for group in groups]
    return SearchOut(results=results, took_ms=_ms(started), cut=groups.cut)


def _out(result, *copies) -> ResultOut:
    thumbnail = _thumb_url(result.id, result.modality)
    return ResultOut(**result.to_dict(), thumbnail=thumbnail, copies=[c.id for c in copies])


def _thumb_url(item_id: int, modality: str) -> str | None:
    return f"/thumbs/{item_id}.jpg" if modality == "image" else None


async def _read_upload(file: UploadFile, limit: int) -> Image.Image:
    data = await file.read(limit + 1)
    return decode_image(data, limit, file.filename or "the upload")


async def _in_thread(function, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
