"""OpenAI-compatible embeddings under /v1, for the clients that speak it: the openai SDK,
LangChain's OpenAIEmbeddings, LlamaIndex's OpenAILikeEmbedding, and vLLM's users.

`GET /v1/models` names the one model loaded. `POST /v1/embeddings` embeds `input` (a string, or
up to MAX_INPUTS strings: E5-V's text prompt is applied here) or, as vLLM takes images for
multimodal embedding models, `messages`: one user turn whose content holds an `image_url` part
(E5-V's image prompt), text (its text prompt) or both (its composed prompt). Every vector comes
from the one model thread (ModelWorker) through the engine's embed methods, so it is the
encoder's own, and `usage` counts the tokens of the prompts the encoder built. Errors on these
routes have OpenAI's shape, {"error": {"message", "type", "param", "code"}}: the SDK puts the
message in its exceptions (it shows nothing of FastAPI's {"detail": ...}). A body over the
route's byte limit is refused before it is read whole.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ..errors import E5VSearchError
from .uploads import image_from_url, read_body

MAX_INPUTS = 2048  # texts a request, as OpenAI's own API; the model thread batches them
OWNER = "e5v-search"
TOKEN_IDS = (
    "input holds token ids, which mean nothing to this model: send the texts themselves (E5-V's "
    "prompt and tokenizer are applied here). From LangChain's OpenAIEmbeddings, pass "
    "check_embedding_ctx_length=False so it sends strings"
)


class ImageURL(BaseModel):
    url: str = Field(description="A data: URI; an http(s) URL only with --allow-remote-images")
    detail: str | None = Field(None, description="OpenAI's; ignored")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = Field(description='"text" or "image_url"')
    text: str | None = None
    image_url: ImageURL | str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(description='"user": one user turn, E5-V\'s prompt is applied here')
    content: str | list[ContentPart]


TEXTS_SCHEMA = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    "description": f"A text or up to {MAX_INPUTS:,} texts (not token ids)",
}


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, with vLLM's `messages` for images. Fields not named here
    (`user`, vLLM's `truncate_prompt_tokens`, `chat_template`, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, description="The model of GET /v1/models; omitted: that one")
    input: Annotated[Any, WithJsonSchema(TEXTS_SCHEMA)] = None
    messages: list[Message] | None = Field(
        None, description="Instead of input: one user turn with an image_url part, text, or both"
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (the default) or base64 (little-endian float32)"
    )
    dimensions: int | None = Field(None, description="Only the model's own (E5-V: 4096)")


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingOut]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ApiError(HTTPException):
    """A refusal in OpenAI's terms: which request field (`param`) and a short `code`."""

    def __init__(self, status: int, message: str, param: str | None = None, code=None):
        super().__init__(status, message)
        self.param, self.code = param, code


def register(
    app: FastAPI, engine, worker, *, max_upload_bytes: int, allow_remote_images: bool = False
) -> None:
    """The /v1 routes on `app`, embedding through `worker` (the app's model thread). Bodies may
    take an image of `max_upload_bytes` as base64 and a megabyte more."""
    encoder = engine.encoder
    model_id, dim = str(encoder.model_id), int(encoder.dim)
    card = ModelCard(id=model_id, created=int(time.time()), owned_by=OWNER).model_dump()
    route = type("Route", (OpenAIRoute,), {"max_body_bytes": max_upload_bytes * 4 // 3 + 2**20})
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], route_class=route)

    def check_model(name: str | None) -> None:
        if name is not None and name != model_id:
            raise ApiError(
                404,
                f"The model `{name}` does not exist: this server serves `{model_id}` "
                "(GET /v1/models)",
                "model",
                "model_not_found",
            )

    @router.get("/models", response_model=ModelList, summary="The model loaded")
    def models():
        return {"object": "list", "data": [card]}

    @router.get("/models/{model:path}", response_model=ModelCard, summary="The model, by id")
    def model(model: str):
        check_model(model)
        return card

    @router.post(
        "/embeddings",
        response_model=EmbeddingResponse,
        summary="Embed texts, an image, or an image and text (OpenAI's and vLLM's request)",
        response_class=JSONResponse,
    )
    def embeddings(body: EmbeddingRequest):
        check_model(body.model)
        check_request(body, dim)
        if body.input is not None:
            vectors, tokens = worker.texts_counted(texts_of(body.input))
        else:
            text, url = query_of(body.messages)
            if url is None:
                vectors, tokens = worker.texts_counted([text])
            else:
                image = image_from_url(url, max_upload_bytes, allow_remote=allow_remote_images)
                vector, count = worker.image_counted(image, text)
                vectors, tokens = vector[None], [count]
        return JSONResponse(reply(vectors, tokens, body.encoding_format or "float", model_id))

    @router.api_route(
        "/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
    )
    def elsewhere(path: str, request: Request):
        known = path in ("models", "embeddings") or path.startswith("models/")
        raise ApiError(
            405 if known else 404,
            f"no route {request.method} /v1/{path[:100]}: this server answers GET /v1/models "
            "and POST /v1/embeddings",
            code="method_not_allowed" if known else "unknown_url",
        )

    app.include_router(router)


def check_request(body: EmbeddingRequest, dim: int) -> None:
    """The 400 for what no input makes right: another size of vector, both or neither input."""
    if body.dimensions is not None and body.dimensions != dim:
        raise ApiError(
            400,
            f"dimensions={body.dimensions}: this model's vectors have {dim} dimensions and "
            "E5-V is not a Matryoshka model (a shortened vector is not a vector of its "
            f"space): omit dimensions or give {dim}",
            "dimensions",
        )
    if body.input is not None and body.messages is not None:
        raise ApiError(400, "give input or messages, not both", "messages")
    if body.input is None and body.messages is None:
        raise ApiError(
            400,
            "give input (a string or a list of strings) or messages (one user turn with an "
            "image_url part and/or text)",
            "input",
        )


def texts_of(value) -> list[str]:
    """The texts of an `input`, or the 400 that says what is wrong with it."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ApiError(400, "input must be a string or a list of strings", "input")
    if not items:
        raise ApiError(400, "input is an empty list: give at least one text", "input")
    if len(items) > MAX_INPUTS:
        raise ApiError(
            400,
            f"input holds {len(items):,} texts; this server embeds at most {MAX_INPUTS:,} a "
            "request (as OpenAI's API does): send them in several requests (LangChain's "
            "chunk_size, LlamaIndex's embed_batch_size)",
            "input",
        )
    for i, item in enumerate(items):
        if isinstance(item, (int, list)):
            raise ApiError(400, TOKEN_IDS, "input", "token_ids_not_supported")
        if not isinstance(item, str):
            raise ApiError(400, f"input[{i}] is a {type(item).__name__}, not a string", "input")
        if not item:
            raise ApiError(400, f"input[{i}] is an empty string: give a text", "input")
    return items


def query_of(messages: list[Message]) -> tuple[str | None, str | None]:
    """(text, image URL) of vLLM-style `messages`: one user turn of text and/or one image."""
    if len(messages) != 1 or messages[0].role != "user":
        roles = ", ".join(m.role for m in messages) or "none"
        raise ApiError(
            400,
            f"messages must hold one user turn (role user; here: {roles}): E5-V embeds one "
            "query, and this server applies E5-V's own prompt (no chat template or system "
            "turn)",
            "messages",
        )
    content = messages[0].content
    parts = [ContentPart(type="text", text=content)] if isinstance(content, str) else content
    texts, urls = [], []
    for i, part in enumerate(parts):
        where = f"messages[0].content[{i}]"
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type == "image_url" and part.image_url is not None:
            image_url = part.image_url
            urls.append(image_url if isinstance(image_url, str) else image_url.url)
        elif part.type in ("text", "image_url"):
            raise ApiError(400, f"{where} has type {part.type} but no {part.type}", "messages")
        else:
            raise ApiError(
                400,
                f"{where} has type {part.type[:40]!r}: this server takes text and image_url parts",
                "messages",
            )
    if len(urls) > 1:
        raise ApiError(
            400,
            f"the message holds {len(urls)} images: E5-V embeds one image a query (with or "
            "without text); send one request per image",
            "messages",
        )
    text = "\n".join(texts)  # as vLLM joins a turn's text parts
    text = text if text.strip() else None
    if text is None and not urls:
        raise ApiError(400, "the message holds no text and no image", "messages")
    return text, (urls[0] if urls else None)


def reply(vectors: np.ndarray, tokens: list[int], encoding: str, model: str) -> dict:
    def encoded(vector: np.ndarray):
        vector = np.asarray(vector, dtype="<f4")
        return vector.tolist() if encoding == "float" else base64.b64encode(vector).decode()

    total = int(sum(tokens))
    return {
        "id": f"embd-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": encoded(vector)}
            for i, vector in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


def error_response(status: int, message: str, param=None, code=None) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status)


class OpenAIRoute(APIRoute):
    """A /v1 route: its body read within `max_body_bytes`, its errors in OpenAI's shape."""

    max_body_bytes = 32 * 2**20

    def get_route_handler(self):
        handler = super().get_route_handler()
        limit = self.max_body_bytes

        async def route(request: Request):
            try:
                return await handler(_CappedRequest(request.scope, request.receive, limit))
            except RequestValidationError as error:
                return error_response(400, *_validation_message(error))
            except HTTPException as error:
                param, code = getattr(error, "param", None), getattr(error, "code", None)
                return error_response(error.status_code, str(error.detail), param, code)
            except E5VSearchError as error:
                from .app import status_of  # app.py imports this module to register the routes

                return error_response(status_of(error), str(error))

        return route


class _CappedRequest(Request):
    def __init__(self, scope, receive, limit: int):
        super().__init__(scope, receive)
        self.limit = limit

    async def body(self) -> bytes:
        if not hasattr(self, "_capped"):
            data = await read_body(self, self.limit)
            if data is None:
                raise self._too_large()
            self._capped = data
        return self._capped

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"the request body is over {self.limit // 2**20} MiB (an image of the server's "
            "--max-upload-mb as base64, and texts besides)",
            code="request_too_large",
        )


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}", None
    if first.get("type") == "missing" and not where:
        return "the request has no body: send a JSON object (model, input or messages)", None
    return f"{'.'.join(where) or 'body'}: {first.get('msg')}", (where[0] if where else None)
