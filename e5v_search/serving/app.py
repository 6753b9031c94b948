"""The HTTP API and the search page (FastAPI). Handlers only call the engine.

The engine is opened and the model loaded once, at start-up. Every model call goes through one
`ModelWorker` thread; index reads go through `_Index`, the engine behind a lock (they take
milliseconds), which first follows what other processes committed.
Files are served only for items the catalog knows, by integer id; uploads are size- and
type-checked (uploads.py); the only files written are thumbnails inside the index directory.
Requests pass `RequestGuard` first: headers over 8 KiB get 431, a Host not allowed gets 400;
then, where origins were given, CORS on the read routes (cors.py). The OpenAI-compatible
routes under /v1 are openai_api.py's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
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
from . import openai_api
from .cors import ReadRoutesCORS
from .guards import LOCAL_HOSTS, RequestGuard
from .thumbnails import THUMBNAIL_SIZES, ThumbnailCache, thumbnail_folder
from .uploads import decode_image
from .worker import ModelWorker

STATIC = Path(__file__).parent / "static"
Modality = Literal["image", "text", "any"]
Mode = Literal["vector", "keyword", "hybrid"]  # config.SEARCH_MODES
MODE_HELP = "vector (cosine), keyword (BM25 of the words) or hybrid (both fused)"
MIN_SCORE_HELP = "Cut results scoring below this (the mode's score); `cut` says how many"


@dataclass
class ResultOut(Result):
    """A result as the engine returns it, with the URL of its thumbnail (images)."""

    thumbnail: str | None = None


class SearchOut(BaseModel):
    results: list[ResultOut]
    took_ms: float
    cut: int = 0  # how many of the k best `min_score` removed


@dataclass
class Ranking:
    """How a request ranks: its mode, score threshold and hybrid weight."""

    mode: str = "vector"
    min_score: float | None = None
    weight: float = HYBRID_WEIGHT

    def options(self) -> dict:
        return {"mode": self.mode, "min_score": self.min_score, "weight": self.weight}


def create_app(
    engine,
    *,
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
    default. `allow_remote_images`: /v1/embeddings may fetch http(s) image URLs."""
    engine.spec()  # load the model now, and refuse a model the index was not built with
    app = FastAPI(
        title="e5v-search",
        description="Multimodal search with E5-V: texts and images in one vector space.",
        version="0.1.0",
    )
    app.state.worker = ModelWorker(engine, cache_size=text_cache_size)
    index = _Index(engine)
    openai_api.register(
        app,
        engine,
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

    _search_routes(app, index, app.state.worker, max_upload_bytes)
    _item_routes(app, index, ThumbnailCache(thumbnail_folder(engine.path), thumbnail_cache_bytes))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return (STATIC / "index.html").read_text()

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _Index:
    """The engine behind one lock: FAISS and catalog reads take milliseconds, and a refresh
    (what a CLI ingest, delete or rebuild committed meanwhile) must not run beside a search."""

    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()

    def search(self, vector, target: str, k: int, filters: dict, text, ranking: Ranking):
        with self._lock:
            self.engine.refresh()
            return self.engine.search_vector(
                vector, target=target, k=k, where=filters or None, text=text, **ranking.options()
            )

    def like(self, item_id: int, k: int, target: str | None, filters: dict, ranking: Ranking):
        with self._lock:
            self.engine.refresh()
            if not self.engine.items([item_id]):
                raise HTTPException(404, f"no item with id {item_id}")
            return self.engine.search(
                like=item_id, k=k, modality=target, where=filters or None, **ranking.options()
            )

    def item(self, item_id: int, image: bool = False) -> dict:
        with self._lock:
            rows = self.engine.items([item_id])
        if image and rows and (rows[0]["modality"] != "image" or not rows[0]["source"]):
            rows = []
        if not rows:
            raise HTTPException(404, f"no {'image' if image else 'item'} with id {item_id}")
        return rows[0]

    def info(self) -> dict:
        with self._lock:
            self.engine.refresh()
            return self.engine.info()

    def counts(self) -> dict:
        with self._lock:
            return self.engine.counts()


def _search_routes(app: FastAPI, index: _Index, worker: ModelWorker, max_upload_bytes: int):
    def answer(query, k, type, filters, text, ranking: Ranking, started) -> SearchOut:
        vector, target = query
        results = index.search(vector, type or target, k, filters, text, ranking)
        return _answer(results, started)

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
    ):
        started = time.perf_counter()
        filters = parse_filters(meta)
        ranking = Ranking(mode, min_score, weight)
        if (q is None) == (like is None):
            raise HTTPException(400, "give exactly one of q (a text) and like (an item id)")
        if like is not None:
            return _answer(index.like(like, k, type, filters, ranking), started)
        query = index.engine.query_vector(q, embedder=worker, mode=mode)
        return answer(query, k, type, filters, q, ranking, started)

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
    ):
        started = time.perf_counter()
        image = await _read_upload(file, max_upload_bytes)
        filters = parse_filters(meta)
        ranking = Ranking(mode, min_score, weight)
        text = text if text and text.strip() else None
        query = index.engine.query_vector
        vector = await _in_thread(lambda: query(text, image, embedder=worker, mode=mode))
        return await _in_thread(answer, vector, k, type, filters, text, ranking, started)


def _item_routes(app: FastAPI, index: _Index, thumbnails: ThumbnailCache):
    @app.get("/api/items/{item_id}", summary="An item's metadata")
    def item(item_id: int = FastPath(ge=1, le=MAX_ID)):
        row = index.item(item_id)
        return {**row, "thumbnail": _thumb_url(row["id"], row["modality"])}

    @app.get("/api/info", summary="Counts, model spec, index types and sizes")
    def info():
        return index.info()

    @app.get("/api/health", summary="Liveness and what is loaded")
    def health():
        encoder = index.engine.encoder
        return {
            "status": "ok",
            "items": index.counts(),
            "model": encoder.model_id,
            "device": str(encoder.device),
        }

    @app.get("/thumbs/{item_id}.jpg", summary="A thumbnail of a stored image")
    def thumbnail(item_id: int = FastPath(ge=1, le=MAX_ID), size: int = Query(256)):
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(400, f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}")
        row = index.item(item_id, image=True)
        try:
            path = thumbnails.get(row, size)
        except errors.InputError as error:
            raise HTTPException(404, f"image {item_id} cannot be read now: {error}") from error
        return FileResponse(
            path, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
        )

    @app.get("/files/{item_id}", summary="The original file of a stored image")
    def original(item_id: int = FastPath(ge=1, le=MAX_ID)):
        row = index.item(item_id, image=True)
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


def _answer(results, started) -> SearchOut:
    return SearchOut(results=[_out(r) for r in results], took_ms=_ms(started), cut=results.cut)


def _out(result) -> ResultOut:
    return ResultOut(**result.to_dict(), thumbnail=_thumb_url(result.id, result.modality))


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
