"""E5VEncoder: texts, images and image+text queries to E5-V's unit vectors.

It gives the model card's vectors (same prompts, last-token pooling, L2 norm) while running only
the base `LlavaNextModel` (no lm_head, no KV cache, no hidden-state list), batching under a token
budget with the longest items first, and repairing legacy checkpoints.

Batches are padded on the RIGHT and each row pools its own last real token. The recipe pads left
and pools position -1, but left padding makes every pad position a query row with nothing to
attend to (all its keys are pads); transformers 5.x no longer un-masks such rows, and fp16/bf16
attention kernels can return NaN there, which the next layer spreads to real tokens (0 x NaN).
With right padding every pad row sees its sequence's real tokens, no row is ever fully masked,
and each item keeps the positions it has alone. Every pooled vector is checked all the same: a
non-finite row is embedded again alone, and one that stays non-finite raises `EmbeddingError`.
"""

from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DEFAULT_MODEL, MAX_BATCH_TOKENS, MAX_PIXELS, default_workers
from ..errors import EmbeddingError, InputError
from ..images import image_size, load_image
from ..spec import Spec
from . import checkpoint, prompts
from .batching import plan_batches
from .loading import load_pretrained, vector_spec
from .preprocess import PreparedImage, Preprocessor

PROGRESS_MIN_ITEMS = 64
# A text is cut by characters before it is tokenized (see `_within_reach`): first to this many
# characters a token of the context, with this many tokens to spare.
CHARS_PER_TOKEN = 8
SPARE_TOKENS = 256
LOOKAHEAD_BATCHES = 2  # batches prepared ahead of the model: keeps it fed, bounds memory


@dataclass
class _Request:
    prompt: str
    n_tokens: int
    ids: list[int] | None = None  # text-only requests are tokenised once, up front
    image: Any = None


class E5VEncoder:
    """Embeds texts, images and composed image+text queries into E5-V's space.

    Build it with `E5VEncoder.from_pretrained(...)`, or wrap an already loaded model and processor
    (a `LlavaNextModel`, or a `LlavaNextForConditionalGeneration` whose base model is used).
    """

    def __init__(
        self,
        model,
        processor,
        *,
        model_id: str = DEFAULT_MODEL,
        revision: str | None = None,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        batch_size: int | None = None,
        quantization: str | None = None,
    ):
        self.model = getattr(model, "model", model).eval()
        self.quantization = quantization  # how the weights were loaded (int8, nf4), if at all
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_id = model_id
        self.revision = revision
        self.max_batch_tokens = max_batch_tokens
        self.batch_size = batch_size
        self.preprocessor = Preprocessor(processor, self.model.config)
        self.repairs = self.preprocessor.repairs + checkpoint.repair_model(
            self.model, self.tokenizer
        )
        self.context = self.model.config.text_config.max_position_embeddings
        self._fingerprint = None
        self._image_prompt_tokens = self.preprocessor.image_prompt_tokens

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        revision: str | None = None,
        device: str | None = "auto",
        dtype=None,
        quantize: str | None = None,
        **options,
    ) -> E5VEncoder:
        """Load from a hub id or a local directory, with `quantize` (int8, nf4) the language
        model quantized; `options` go to the constructor."""
        net, processor, revision = load_pretrained(model, revision, device, dtype, False, quantize)
        return cls(
            net, processor, model_id=str(model), revision=revision, quantization=quantize, **options
        )

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def dim(self) -> int:
        return self.model.config.text_config.hidden_size

    def spec(self) -> Spec:
        """What an embedding depends on; an index records it and refuses queries made otherwise."""
        if self._fingerprint is None:  # reads ~1 MiB per weight file: once
            self._fingerprint = checkpoint.fingerprint(self.model_id, self.revision)
        return vector_spec(
            self.model_id,
            self.revision,
            self._fingerprint,
            self.dim,
            self.dtype,
            quantization=self.quantization,
        )

    def count_image_tokens(self, sizes: list[tuple[int, int]]) -> list[int]:
        """Image placeholder tokens for images of these (height, width), without any pixels."""
        return self.preprocessor.count_image_tokens(sizes)

    def embed_texts(self, texts: list[str], *, progress: bool | None = None) -> np.ndarray:
        return self._run(self._text_requests(texts), progress)

    def embed_images(
        self,
        images,
        *,
        progress: bool | None = None,
        workers: int | None = None,
        prompt: str = prompts.IMAGE_PROMPT,
    ) -> np.ndarray:
        """Images (paths or PIL images). Decoding and anyres preprocessing run ahead of the model
        in `workers` threads (default: up to 8), two batches ahead. `prompt` (one `<image>` in
        it) is E5-V's image prompt unless an evaluation needs another (CIRR's gallery)."""
        requests = self._image_requests(images, prompt)
        workers = default_workers() if workers is None else workers
        return self._run(requests, progress, workers)

    def prepare_image(self, image, max_pixels: int = MAX_PIXELS) -> PreparedImage:
        """Decode and preprocess one image for `embed_prepared`; thread-safe, so a pipeline can
        run it in workers ahead of the model. Raises InputError naming a bad file."""
        return self.preprocessor.prepare_image(image, max_pixels)

    def embed_prepared(
        self, prepared: list[PreparedImage], *, progress: bool | None = None
    ) -> np.ndarray:
        requests = [_Request("", p.n_tokens, image=p) for p in prepared]
        return self._run(requests, progress)

    def embed_composed(self, images, texts, *, progress: bool | None = None) -> np.ndarray:
        """E5-V's composed query: an image and a text saying how to modify it, one vector each."""
        return self._run(self._composed_requests(images, texts), progress)

    def embed_counted(
        self, texts=None, images=None, *, progress: bool | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """`embed_texts(texts)`, `embed_images(images)` or, given both, `embed_composed(images,
        texts)`, with the tokens of each prompt the model read (an image's tokens included,
        counted as the batches are planned): the usage an API reports."""
        if images is None:
            requests = self._text_requests([] if texts is None else texts)
        elif texts is None:
            requests = self._image_requests(images, prompts.IMAGE_PROMPT)
        else:
            requests = self._composed_requests(images, texts)
        return self._run(requests, progress), [r.n_tokens for r in requests]

    def _text_requests(self, texts) -> list[_Request]:
        texts = _as_list(texts, str, "texts")
        encoded = self._encode_prompts(texts, prompts.text_prompt, [0] * len(texts))
        return [_Request(prompt="", n_tokens=len(ids), ids=ids) for _, ids in encoded]

    def _image_requests(self, images, prompt: str) -> list[_Request]:
        images = _as_list(images, object, "images")
        if prompt.count(prompts.IMAGE_TOKEN) != 1:
            raise InputError("an image prompt needs exactly one <image> placeholder")
        around = (  # the prompt's tokens less its <image>
            self._image_prompt_tokens
            if prompt == prompts.IMAGE_PROMPT
            else len(self.tokenizer(prompt).input_ids) - 1
        )
        counts = self.count_image_tokens([image_size(image) for image in images])
        return [
            _Request(prompt, around + n, image=image)
            for image, n in zip(images, counts, strict=True)
        ]

    def _composed_requests(self, images, texts) -> list[_Request]:
        images = _as_list(images, object, "images")
        texts = _as_list(texts, str, "texts")
        if len(images) != len(texts):
            raise InputError(
                f"{len(images)} images but {len(texts)} texts: give one text per image"
            )
        counts = self.count_image_tokens([image_size(image) for image in images])
        # The one <image> placeholder in the prompt becomes n image tokens.
        encoded = self._encode_prompts(texts, prompts.composed_prompt, [n - 1 for n in counts])
        return [
            _Request(prompt, len(ids) + n - 1, image=image)
            for image, (prompt, ids), n in zip(images, encoded, counts, strict=True)
        ]

    def _encode_prompts(self, texts, make_prompt, extra_tokens) -> list[tuple[str, list[int]]]:
        """(prompt, token ids) per text. A prompt that would pass the context (counting
        `extra_tokens` more) has its TEXT cut from the end: the prompt's tail, whose last token is
        pooled, stays whole. One warning says how many were cut."""
        if not texts:
            return []
        texts = [self._within_reach(text) for text in texts]
        built = [make_prompt(t) for t in texts]
        encoded = list(zip(built, self.tokenizer(built).input_ids, strict=True))
        cut = 0
        for i, (text, extra) in enumerate(zip(texts, extra_tokens, strict=True)):
            excess = len(encoded[i][1]) + extra - self.context
            while excess > 0:
                offsets = self.tokenizer(
                    text, add_special_tokens=False, return_offsets_mapping=True
                ).offset_mapping
                keep = max(len(offsets) - excess, 0)
                text = text[: offsets[keep - 1][1]] if keep else ""
                prompt = make_prompt(text)
                encoded[i] = (prompt, self.tokenizer(prompt).input_ids)
                excess = len(encoded[i][1]) + extra - self.context
                if excess > 0 and not text:
                    raise InputError(
                        f"input {i} does not fit the model's context even without text"
                    )
                cut += excess <= 0
        if cut:
            warnings.warn(
                f"{cut} text(s) longer than the model's context of {self.context} tokens were "
                "truncated at the end of the text",
                stacklevel=3,
            )
        return encoded

    def _within_reach(self, text: str) -> str:
        """`text`, or a start of it past anything the token cut of `_encode_prompts` keeps, so
        that a 10 MB text costs what the context costs (milliseconds), not minutes of
        tokenizing. The start has more tokens than the context, SPARE_TOKENS to spare, and
        tokenizes as the whole text does up to near where it ends (BPE merges reach back a few
        tokens, not hundreds), so the token cut keeps the tokens it keeps of the whole text. (Its
        first estimate counts how the text's last characters join the prompt's tail, so a
        start that ends in a space where the text does not can move the cut by a token.)
        The start is first taken at CHARS_PER_TOKEN characters a token (about twice English's),
        and doubled while it has too few tokens (long tokens: runs of symbols or spaces), so a
        text that fits the context is never cut."""
        need = self.context + SPARE_TOKENS
        chars = need * CHARS_PER_TOKEN
        while chars < len(text):
            start = text[:chars]
            if len(self.tokenizer(start, add_special_tokens=False).input_ids) > need:
                return start
            chars *= 2
        return text

    def _run(self, requests: list[_Request], progress: bool | None, workers: int = 0):
        from tqdm.auto import tqdm

        out = np.empty((len(requests), self.dim), dtype=np.float32)
        batches = plan_batches(
            [r.n_tokens for r in requests], self.max_batch_tokens, self.batch_size
        )
        show = len(requests) >= PROGRESS_MIN_ITEMS if progress is None else progress
        # disable=None lets tqdm stay silent when stderr is not a terminal.
        bar = tqdm(
            total=len(requests), unit="item", desc="embedding", disable=None if show else True
        )
        pool = ThreadPoolExecutor(workers) if workers else None
        try:
            ahead: deque = deque()
            planned = iter(batches)
            while True:
                while len(ahead) < LOOKAHEAD_BATCHES and (batch := next(planned, None)):
                    ahead.append((batch, self._start(pool, [requests[i] for i in batch])))
                if not ahead:
                    break
                batch, started = ahead.popleft()
                out[batch] = self._forward(self._inputs(started))
                for i in _non_finite(out, batch) if len(batch) > 1 else []:
                    out[i] = self._forward(self._inputs([requests[i]]))  # alone: no padding
                bar.update(len(batch))
        finally:
            bar.close()
            if pool:
                pool.shutdown(cancel_futures=True)
        failed = _non_finite(out, range(len(out)))
        if failed:
            raise EmbeddingError(
                f"the model gave a non-finite vector for input(s) {failed} even embedded alone "
                f"({self.dtype} on {self.device}): try --dtype bfloat16 or float32",
                failed,
                out,
            )
        return out

    def _start(self, pool, batch: list[_Request]) -> list:
        """Begin preparing a batch: raw images are decoded and preprocessed in the pool."""
        if pool is None or batch[0].image is None or batch[0].prompt != prompts.IMAGE_PROMPT:
            return batch
        return [pool.submit(self.prepare_image, r.image) for r in batch]

    def _inputs(self, batch: list) -> dict:
        """CPU tensors for one forward pass, padded on the right."""
        if isinstance(batch[0], Future):
            batch = [_Request("", 0, image=f.result()) for f in batch]
        first = batch[0]
        if first.image is None:
            return _right_pad([r.ids for r in batch], self.tokenizer.pad_token_id)
        if first.prompt == prompts.IMAGE_PROMPT:
            batch = [_Request("", 0, image=self.prepare_image(r.image)) for r in batch]
        if isinstance(batch[0].image, PreparedImage):
            return self.image_inputs([r.image for r in batch])
        return self.processor(  # composed queries and other image prompts
            text=[r.prompt for r in batch],
            images=[load_image(r.image) for r in batch],
            padding=True,
            padding_side="right",
            return_tensors="pt",
        )

    def text_inputs(self, texts: list[str]) -> dict:
        """Model inputs for `texts` in E5-V's text prompt, as `embed_texts` batches them: CPU
        tensors padded on the right, for `pool` (training the tiny model builds its batches so)."""
        texts = _as_list(texts, str, "texts")
        encoded = self._encode_prompts(texts, prompts.text_prompt, [0] * len(texts))
        return _right_pad([ids for _, ids in encoded], self.tokenizer.pad_token_id)

    def image_inputs(self, images: list) -> dict:
        """Model inputs for images (PreparedImage, or paths and PIL images, prepared here) in
        E5-V's image prompt, as `embed_images` batches them: CPU tensors for `pool`."""
        import torch

        images = [i if isinstance(i, PreparedImage) else self.prepare_image(i) for i in images]
        inputs = _right_pad(
            [self.preprocessor.image_prompt_ids(p) for p in images], self.tokenizer.pad_token_id
        )
        crops = max(p.pixel_values.shape[0] for p in images)
        pixels = torch.zeros((len(images), crops, *images[0].pixel_values.shape[1:]))
        for row, p in enumerate(images):
            # The model slices each image's own crops out of this padding.
            pixels[row, : p.pixel_values.shape[0]] = torch.as_tensor(p.pixel_values)
        inputs["pixel_values"] = pixels
        inputs["image_sizes"] = torch.tensor([p.size for p in images], dtype=torch.long)
        return inputs

    def _forward(self, inputs: dict) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.pool(inputs).float().cpu().numpy()

    def pool(self, inputs: dict):
        """Unit vectors (a torch tensor on the model's device) for model inputs made by this
        encoder: each row's last real token of the final layer, L2-normalised. `_forward` runs
        it without gradients; training the tiny demo model runs it with them."""
        import torch
        import torch.nn.functional as F

        mask = inputs["attention_mask"]
        lengths = mask.sum(dim=1)
        if not torch.equal(mask.bool(), torch.arange(mask.shape[1]) < lengths[:, None]):
            raise RuntimeError("inputs are not padded on the right: pooled vectors would be wrong")
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        hidden = self.model(**inputs, use_cache=False).last_hidden_state
        rows = torch.arange(len(lengths), device=hidden.device)
        return F.normalize(hidden[rows, lengths.to(hidden.device) - 1].float(), dim=-1)


def _right_pad(sequences: list[list[int]], pad_id: int) -> dict:
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _non_finite(out: np.ndarray, rows) -> list[int]:
    return [i for i in rows if not np.isfinite(out[i]).all()]


def _as_list(items, kind, name) -> list:
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        items = [items]
    items = list(items)
    bad = next((i for i, item in enumerate(items) if not isinstance(item, kind)), None)
    if bad is not None:
        raise InputError(
            f"{name}[{bad}] is a {type(items[bad]).__name__}, expected {kind.__name__}"
        )
    return items
