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

import logging
import os
import sys
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_MODEL, MAX_BATCH_TOKENS, MAX_PIXELS, default_workers
from ..errors import EmbeddingError, InputError, ModelLoadError
from ..images import image_size, load_image
from ..spec import Spec
from . import checkpoint, prompts
from .batching import plan_batches
from .preprocess import PreparedImage, Preprocessor

PROGRESS_MIN_ITEMS = 64
# A text is cut by characters before it is tokenized (see `_within_reach`): first to this many
# characters a token of the context, with this many tokens to spare.
CHARS_PER_TOKEN = 8
SPARE_TOKENS = 256
LOOKAHEAD_BATCHES = 2  # batches prepared ahead of the model: keeps it fed, bounds memory
QUANTIZATIONS = ("int8", "nf4")
_DTYPES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


@dataclass
class _Request:
    prompt: str
    n_tokens: int
    ids: list[int] | None = None  # text-only requests are tokenised once, up front
    image: Any = None


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype, device: str):
    """fp16 on a GPU (the model card's dtype), fp32 on a CPU (fp16 matmuls are slow there)."""
    import torch

    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}: use one of float16, bfloat16, float32")
    return getattr(torch, name)


def estimated_parameters(config) -> int:
    """Parameters of a LLaVA-NeXT config (Llama, CLIP tower, projector) without its weights:
    8.35e9 for E5-V's (the model has 8.36e9)."""
    t, v = config.text_config, config.vision_config
    heads = t.num_attention_heads
    kv_heads = getattr(t, "num_key_value_heads", None) or heads
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // heads
    attention = t.hidden_size * head_dim * 2 * (heads + kv_heads)
    layer = attention + 3 * t.hidden_size * t.intermediate_size
    llm = 2 * t.vocab_size * t.hidden_size + t.num_hidden_layers * layer
    vision = v.num_hidden_layers * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    vision += 3 * v.patch_size**2 * v.hidden_size
    projector = v.hidden_size * t.hidden_size + t.hidden_size**2
    return int(llm + vision + projector)


def cpu_dtype(parameters: int, available_bytes: int) -> str:
    """The CPU's dtype when none is asked for: float32 (exact, fastest on a CPU) while its
    weights take at most half the memory available, else bfloat16 (half the bytes; E5-V in fp32
    is 33 GB, so a 16-32 GB laptop gets bfloat16). `check --dtype bfloat16` measures the drift."""
    return "float32" if 4 * parameters <= available_bytes // 2 else "bfloat16"


def available_memory() -> int:
    """Bytes of memory available now (Linux's MemAvailable; else all of it)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def spec_from_config(model: str, revision=None, device="cpu", dtype=None, quantize=None) -> Spec:
    """The spec an encoder would report, read from the checkpoint's config alone."""
    from transformers import LlavaNextConfig

    config = LlavaNextConfig.from_pretrained(model, revision=revision)
    device = resolve_device(device)
    if quantize and dtype is None:
        dtype = "bfloat16" if device == "cpu" else "float16"  # the rule load_pretrained applies
    elif dtype is None and device == "cpu":
        dtype = cpu_dtype(estimated_parameters(config), available_memory())
    torch_dtype = resolve_dtype(dtype, device)
    revision = revision or getattr(config, "_commit_hash", None)
    fingerprint = checkpoint.fingerprint(model, revision)
    dim = config.text_config.hidden_size
    return Spec.of(model, revision, fingerprint, dim, torch_dtype, quantization=quantize)


def quantization_config(quantize: str, torch_dtype):
    """bitsandbytes through transformers: the language model's linear layers in int8 (LLM.int8)
    or 4-bit NF4; the vision tower, projector, embeddings and norms stay in `torch_dtype`. The
    same library on CUDA and on the CPU (bitsandbytes >= 0.48 has CPU kernels for both)."""
    if quantize not in QUANTIZATIONS:
        raise InputError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    # Its CPU backend warns on import that it cannot fetch an optional faster 4-bit kernel from
    # the hub (the `kernels` package); the built-in one it falls back to is what we measured.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ModelLoadError(
            f"--quantize {quantize} needs bitsandbytes: pip install 'e5v-search[quantize]'"
        ) from error
    from transformers import BitsAndBytesConfig

    keep = ["vision_tower", "multi_modal_projector", "lm_head"]
    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch_dtype,
        llm_int8_skip_modules=keep,
    )


def load_pretrained(model, revision=None, device="auto", dtype=None, full=False, quantize=None):
    """(model, processor, revision) from a hub id or a local directory: the base LlavaNextModel,
    or with `full` the whole LlavaNextForConditionalGeneration (lm_head too) the recipe runs.
    `quantize` (int8, nf4): the language model's linear layers quantized on loading, the rest
    in bfloat16 on a CPU and float16 on a GPU unless `dtype` says otherwise."""
    from transformers import (
        LlavaNextForConditionalGeneration,
        LlavaNextModel,
        LlavaNextProcessor,
    )

    device = resolve_device(device)
    if quantize and dtype is None:
        dtype = "bfloat16" if device == "cpu" else "float16"
    elif dtype is None and device == "cpu":
        dtype = _cpu_dtype_for(model, revision)
    torch_dtype = resolve_dtype(dtype, device)
    options = {}
    if quantize:
        options = {"quantization_config": quantization_config(quantize, torch_dtype)}
    model_class = LlavaNextForConditionalGeneration if full else LlavaNextModel
    try:
        # The PIL image backend everywhere: a GPU box with torchvision then preprocesses
        # exactly like a laptop without (and anyres.py makes both E5-V's own pixels).
        processor = LlavaNextProcessor.from_pretrained(model, revision=revision, backend="pil")
        # Loading straight onto the GPU (device_map) spares 16 GB of host memory for 8B;
        # bitsandbytes quantizes while placing, so it always takes one.
        placement = {} if device == "cpu" and not quantize else {"device_map": device}
        with _quiet_transformers():
            net, info = model_class.from_pretrained(
                model,
                revision=revision,
                dtype=torch_dtype,
                output_loading_info=True,
                **placement,
                **options,
            )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001 - safetensors panics on a truncated file
        raise ModelLoadError(
            f"cannot load an E5-V model from {model!r}: {type(error).__name__}: {error}\n"
            "Give a hub id (royokong/e5-v) or a local directory with config.json, the "
            "weights and the processor files; a weight file may be incomplete (download it "
            "again)."
        ) from error
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ModelLoadError(
            f"{model!r} lacks {len(missing)} weights of a LLaVA-NeXT model "
            f"(first: {missing[0]}): is it an E5-V checkpoint?"
        )
    return net.eval(), processor, revision or getattr(net.config, "_commit_hash", None)


@dataclass(frozen=True)
class ModelChoice:
    """Which checkpoint to load and how: what the engine holds and hands to a Ray actor, which
    loads it itself (the driver never loads the weights)."""

    model: str = DEFAULT_MODEL  # hub id or local directory
    revision: str | None = None
    device: str | None = "auto"
    dtype: Any = None  # float16, bfloat16, float32 (or a torch dtype); None: the device's default
    batch_size: int | None = None
    max_batch_tokens: int = MAX_BATCH_TOKENS
    quantize: str | None = None  # int8 or nf4: the language model's linear layers

    def load(self) -> E5VEncoder:
        return E5VEncoder.from_pretrained(
            self.model,
            self.revision,
            self.device,
            self.dtype,
            quantize=self.quantize,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
        )

    def spec_on(self, device: str) -> Spec:
        """The spec an encoder loaded on `device` would report, from the config alone."""
        return spec_from_config(self.model, self.revision, device, self.dtype, self.quantize)


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
        return cls(net, processor, model_id=str(model), revision=revision, quantization=quantize,
                   **options)  # fmt: skip

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
        return Spec.of(self.model_id, self.revision, self._fingerprint, self.dim, self.dtype,
                       quantization=self.quantization)  # fmt: skip

    def count_image_tokens(self, sizes: list[tuple[int, int]]) -> list[int]:
        """Image placeholder tokens for images of these (height, width), without any pixels."""
        return self.preprocessor.count_image_tokens(sizes)

    def embed_texts(self, texts: list[str], *, progress: bool | None = None) -> np.ndarray:
        texts = _as_list(texts, str, "texts")
        encoded = self._encode_prompts(texts, prompts.text_prompt, [0] * len(texts))
        requests = [_Request(prompt="", n_tokens=len(ids), ids=ids) for _, ids in encoded]
        return self._run(requests, progress)

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
        images = _as_list(images, object, "images")
        if prompt.count(prompts.IMAGE_TOKEN) != 1:
            raise InputError("an image prompt needs exactly one <image> placeholder")
        around = (  # the prompt's tokens less its <image>
            self._image_prompt_tokens
            if prompt == prompts.IMAGE_PROMPT
            else len(self.tokenizer(prompt).input_ids) - 1
        )
        counts = self.count_image_tokens([image_size(image) for image in images])
        requests = [
            _Request(prompt, around + n, image=image)
            for image, n in zip(images, counts, strict=True)
        ]
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
        images = _as_list(images, object, "images")
        texts = _as_list(texts, str, "texts")
        if len(images) != len(texts):
            raise InputError(
                f"{len(images)} images but {len(texts)} texts: give one text per image"
            )
        counts = self.count_image_tokens([image_size(image) for image in images])
        # The one <image> placeholder in the prompt becomes n image tokens.
        encoded = self._encode_prompts(texts, prompts.composed_prompt, [n - 1 for n in counts])
        requests = [
            _Request(prompt, len(ids) + n - 1, image=image)
            for image, (prompt, ids), n in zip(images, encoded, counts, strict=True)
        ]
        return self._run(requests, progress)

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
            return self._collate([r.image for r in batch])
        return self.processor(  # composed queries and other image prompts
            text=[r.prompt for r in batch],
            images=[load_image(r.image) for r in batch],
            padding=True,
            padding_side="right",
            return_tensors="pt",
        )

    def _collate(self, images: list[PreparedImage]) -> dict:
        import torch

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


def _cpu_dtype_for(model, revision) -> str | None:
    """float32 or bfloat16 by `cpu_dtype`'s rule, said once in a log line when bfloat16."""
    from transformers import LlavaNextConfig

    try:
        config = LlavaNextConfig.from_pretrained(model, revision=revision)
    except (OSError, ValueError):
        return None  # from_pretrained below names the problem
    parameters, available = estimated_parameters(config), available_memory()
    chosen = cpu_dtype(parameters, available)
    if chosen == "bfloat16":
        logging.getLogger(__name__).warning(
            "loading %s in bfloat16 on the CPU: in float32 its %.1f GB of weights would take "
            "over half of the %.1f GB available (--dtype float32 to insist)",
            model, 4 * parameters / 1e9, available / 1e9,
        )  # fmt: skip
    return chosen


@contextmanager
def _quiet_transformers():
    """No load report (it lists the lm_head skipped on purpose); a loading bar only on a
    terminal, where it helps with 16 GB of weights."""
    from transformers.utils import logging

    level, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    if not sys.stderr.isatty():
        logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


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
