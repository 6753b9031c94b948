"""The serving layer: the HTTP API and the search page.

app (FastAPI handlers, each a call to the engine), openai_api (OpenAI-compatible embeddings
under /v1, errors in OpenAI's shape), clip_api (clip-retrieval's back end: /knn-service,
/metadata, /indices-list), indexes (the indexes served, one model, each behind its lock), cors
(opt-in CORS on the read routes), guards (the Host allow-list and the header cap, before any
handler), listener (sockets bound before the model loads; uvicorn with a deadline per request
head and a connection limit), worker (one thread owns the model; micro-batched texts; LRU
cache), thumbnails (a bounded cache in the index directory), uploads (images as clients send
them: one set of limits and the EXIF rule), static/ (the page: no build step).
"""
