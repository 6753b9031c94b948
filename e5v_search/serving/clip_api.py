"""clip-retrieval's back-end protocol (rom1504/clip-retrieval's clip_back.py), so its `ClipClient`
and clip-front work unchanged against this server: POST /knn-service, POST /metadata and
GET /indices-list, over every index served (`indice_name` is an index folder's name).

Bodies are JSON whatever their content type (ClipClient sends none, clip-front text/plain, and
clip-retrieval parses both), within the upload limit as base64 and a megabyte more. A query is
`text`, else `image` (base64 of the file's bytes) or `image_url` (a data: URI, or an http(s) URL
only where the server was started with --allow-remote-images), else `embedding_input` (a vector
of the model's width): clip-retrieval's order. E5-V's prompts are applied here. `modality` is
the side of the index searched (image or text); `deduplicate` (true unless said) shows
near-identical results once (Engine.collapse, over all `num_result_ids`, as clip-retrieval
does). `use_mclip`, `use_safety_model`, `use_violence_detector`, `aesthetic_score` and
`aesthetic_weight` are accepted and ignored: there is no such model here.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ..config import MAX_ID, MAX_K
from .indexes import Served, ServedIndex
from .uploads import decode_base64, decode_image, image_from_url, read_body

THUMBNAIL = 256  # the size of `url`'s thumbnail: clip-front shows results ~200 px wide


class KnnRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    modality: Literal["image", "text"] = Field(description="Which items to find")
    num_images: int = Field(ge=1, le=MAX_K, description="Results returned with their metadata")
    num_result_ids: int | None = Field(
        None, ge=1, le=MAX_K, description="Results in all (those past num_images: id only)"
    )
    indice_name: str | None = Field(None, description="An index served (GET /indices-list)")
    text: str | None = None
    image: str | None = Field(None, description="Base64 of an image file's bytes")
    image_url: str | None = Field(None, description="A data: URI (http(s) if the server allows)")
    embedding_input: list[float] | None = Field(None, description="A query vector")
    deduplicate: bool = Field(True, description="Near-identical results once")
    include_image: bool = Field(False, description="Each result's thumbnail as base64 JPEG")
    use_mclip: Any = None
    use_safety_model: Any = None
    use_violence_detector: Any = None
    aesthetic_score: Any = None
    aesthetic_weight: Any = None


class MetadataRequest(BaseModel):
    ids: list[int] = Field(max_length=MAX_K)
    indice_name: str | None = None


def register(
    app: FastAPI,
    indexes: Served,
    worker,
    *,
    max_upload_bytes: int,
    allow_remote_images: bool = False,
) -> None:
    limit = max_upload_bytes * 4 // 3 + 2**20
    dim = int(indexes.default.engine.encoder.dim)

    @app.get("/indices-list", summary="The indexes served", tags=["clip-retrieval"])
    def indices_list() -> list[str]:
        return list(indexes)

    @app.post(
        "/knn-service",
        summary="Nearest items of a text, an image or a vector (clip-retrieval's request)",
        tags=["clip-retrieval"],
        openapi_extra=_body_of(KnnRequest),
    )
    async def knn_service(request: Request):
        body = _parsed(KnnRequest, await _json(request, limit))
        index = indexes.get_index(body.indice_name)
        image = None
        if body.text:
            pass  # clip-retrieval's order: a text first
        elif body.image is not None:
            data = decode_base64(body.image, max_upload_bytes, "image")
            image = decode_image(data, max_upload_bytes, "the image")
        elif body.image_url is not None:
            url, allowed = body.image_url, allow_remote_images
            image = await run_in_threadpool(
                image_from_url, url, max_upload_bytes, allow_remote=allowed
            )
        elif body.embedding_input is None:
            raise HTTPException(400, "give text, image (base64), image_url or embedding_input")
        answer = await run_in_threadpool(_knn, body, index, image, worker, dim)
        return JSONResponse(_out(answer, body, index, indexes, str(request.base_url)))

    @app.post(
        "/metadata",
        summary="The metadata of items by id (clip-retrieval's request)",
        tags=["clip-retrieval"],
        openapi_extra=_body_of(MetadataRequest),
    )
    async def metadata(request: Request):
        body = _parsed(MetadataRequest, await _json(request, limit))
        index = indexes.get_index(body.indice_name)
        wanted = [i for i in body.ids if 1 <= i <= MAX_ID]
        rows = {row["id"]: row for row in await run_in_threadpool(index.items, wanted)}
        base = str(request.base_url)
        return [
            {"id": i, "metadata": _metadata(rows[i], index, indexes, base)}
            for i in body.ids
            if i in rows
        ]


def _knn(body: KnnRequest, index: ServedIndex, image, worker, dim: int):
    if body.text or image is not None:
        vector, _ = index.engine.query_vector(body.text or None, image, embedder=worker)
    else:
        vector = np.asarray(body.embedding_input, dtype=np.float32)
        if vector.shape != (dim,) or not np.isfinite(vector).all() or not vector.any():
            raise HTTPException(
                400,
                f"embedding_input must be {dim} finite numbers, not all zero (this model's "
                f"width), not {len(body.embedding_input)}",
            )
        vector = vector / np.linalg.norm(vector)
    wanted = max(body.num_result_ids or body.num_images, body.num_images)
    results = [group[0] for group in index.search(vector, body.modality, wanted)]
    if body.deduplicate:  # among these results, as clip-retrieval does: a deeper fetch costs
        results = [group[0] for group in index.collapse(results)]
    # the results carry what metadata needs; a thumbnail also needs the row's content hash
    shown = [r.id for r in results[: body.num_images] if r.modality == "image"]
    rows = index.items(shown) if body.include_image else []
    return results, {row["id"]: row for row in rows}


def _out(answer, body: KnnRequest, index: ServedIndex, indexes: Served, base: str) -> list:
    results, rows = answer
    out = []
    for n, result in enumerate(results):
        entry = {"id": result.id, "similarity": round(float(result.score), 6)}
        if n < body.num_images:
            entry = {**_metadata(result.to_dict(), index, indexes, base), **entry}
            if result.id in rows:
                entry["image"] = _thumbnail_base64(index, rows[result.id])
        out.append(entry)
    return out


def _metadata(row: dict, index: ServedIndex, indexes: Served, base: str) -> dict:
    """clip-retrieval's columns of an item: its own metadata, then `caption` (a text's text, an
    image's caption or description, else its file name), `url` (an image's thumbnail here),
    `original` (its file here), `path` and `modality`."""
    meta = dict(row["metadata"] or {})
    if row["modality"] == "text":
        meta["caption"] = row["text"]
    else:
        meta["caption"] = _caption(meta) or Path(row["source"] or "").name
        where = "" if index is indexes.default else f"&index={urllib.parse.quote(index.name)}"
        meta["url"] = f"{base}thumbs/{row['id']}.jpg?size={THUMBNAIL}{where}"
        meta["original"] = f"{base}files/{row['id']}{where.replace('&', '?', 1)}"
    meta["path"] = row["source"]
    meta["modality"] = row["modality"]
    return {key: value for key, value in meta.items() if value is not None}


def _caption(meta: dict) -> str | None:
    for key in ("caption", "description", "title"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key]
    return None


def _thumbnail_base64(index: ServedIndex, row: dict) -> str | None:
    try:
        return base64.b64encode(index.thumbnails.get(row, THUMBNAIL).read_bytes()).decode()
    except (OSError, ValueError):  # the file is gone or unreadable: the url still says which
        return None


async def _json(request: Request, limit: int):
    data = await read_body(request, limit)
    if data is None:
        raise HTTPException(413, f"the request body is over {limit // 2**20} MiB")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise HTTPException(400, f"the body is not JSON: {str(error)[:200]}") from None


def _parsed(model: type[BaseModel], value):
    if not isinstance(value, dict):
        raise HTTPException(400, "the body must be a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise HTTPException(400, f"{where}: {first['msg']}") from None


def _body_of(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
