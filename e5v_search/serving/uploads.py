"""Images as clients send them, decoded by one set of rules whichever route they come by.

Bytes over the upload limit or images over the pixel cap get 413, what is not an image 415, an
image that will not decode 400, and every image is turned upright by the EXIF rule of files on
disk. An `image_url` is a `data:` URI; an http(s) URL is fetched only where the server was
started with `--allow-remote-images` (`allow_remote`), else any client could make the server
fetch whatever address it reaches (SSRF): then within `REMOTE_TIMEOUT` seconds and the same
byte limit, following redirects to http(s) only.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import time
import urllib.error
import urllib.parse
import urllib.request

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from ..config import MAX_PIXELS
from ..images import upright_rgb

REMOTE_TIMEOUT = 10.0  # seconds for a remote image, connecting and reading together
_CHUNK = 64 * 1024
_WHITESPACE = str.maketrans("", "", " \t\r\n")  # base64 wrapped over lines


def decode_image(data: bytes, limit: int, name: str = "the upload") -> Image.Image:
    """An upright RGB image from a client's bytes, or an HTTPException saying what is wrong."""
    if len(data) > limit:
        raise HTTPException(413, f"{name} is over {_size(limit)}")
    if not data:
        raise HTTPException(400, f"{name} is empty")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise HTTPException(413, f"the image has over {MAX_PIXELS:,} pixels")
        image.load()
        return upright_rgb(image)  # the same EXIF rule as a file on disk
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise HTTPException(415, f"{name} is not an image") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise HTTPException(400, f"{name} cannot be decoded: {error}") from error


async def read_body(request, limit: int) -> bytes | None:
    """A request's body, or None when it is over `limit` bytes (as declared or as sent): read a
    chunk at a time, so an oversized body is never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def image_from_url(url: str, limit: int, *, allow_remote: bool = False) -> Image.Image:
    """The image of an OpenAI-style `image_url`: a data: URI, or an http(s) URL if allowed."""
    scheme = urllib.parse.urlsplit(url[:16]).scheme.lower()
    if scheme == "data":
        return decode_image(_data_uri(url, limit), limit, "the image")
    if scheme not in ("http", "https"):
        raise HTTPException(
            400,
            "image_url.url must be a data: URI (data:image/jpeg;base64,...) or an http(s) URL, "
            f"not {url[:40]!r}",
        )
    if not allow_remote:
        raise HTTPException(
            400,
            "remote image URLs are refused: this server fetches no URL unless it was started "
            "with --allow-remote-images; send the image as a data: URI "
            "(data:image/jpeg;base64,...)",
        )
    return decode_image(fetch(url, limit), limit, f"the image at {url[:200]}")


def fetch(url: str, limit: int, timeout: float = REMOTE_TIMEOUT) -> bytes:
    """The bytes at an http(s) URL: at most `limit` (413 beyond), within `timeout` seconds."""
    opener = urllib.request.build_opener(_HttpRedirectsOnly)
    request = urllib.request.Request(url, headers={"User-Agent": "e5v-search"})
    deadline = time.monotonic() + timeout
    where = url[:200]
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise HTTPException(413, f"the image at {where} is over {_size(limit)}")
            data = bytearray()
            while chunk := response.read1(_CHUNK):  # one read at a time: the deadline holds
                data += chunk
                if len(data) > limit:
                    raise HTTPException(413, f"the image at {where} is over {_size(limit)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not read within {timeout:g} s")
            return bytes(data)
    except urllib.error.HTTPError as error:
        raise HTTPException(
            400, f"fetching {where}: it answered {error.code} {error.reason}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise HTTPException(400, f"cannot fetch {where}: {reason}") from None


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise HTTPException(400, f"{req.full_url[:200]} redirects to a URL that is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _data_uri(url: str, limit: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise HTTPException(400, "the data: URI has no comma before its data")
    if not header.lower().endswith(";base64"):
        data = urllib.parse.unquote_to_bytes(payload)
    else:
        data = decode_base64(payload, limit, "the data: URI")
    return data


def decode_base64(text: str, limit: int, what: str) -> bytes:
    """The bytes of base64 `text` (wrapped over lines or not): 413 when they would be over
    `limit`, told before decoding (4 characters hold 3 bytes); 400 when it is not base64."""
    if len(text) // 4 * 3 > limit + 3:
        raise HTTPException(413, f"the image is over {_size(limit)}")
    try:
        return base64.b64decode(text.translate(_WHITESPACE), validate=True)
    except (binascii.Error, ValueError) as error:
        raise HTTPException(400, f"{what} is not valid base64: {error}") from None


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit:,} bytes"
