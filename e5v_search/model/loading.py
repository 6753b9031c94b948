"""Loading E5-V: which checkpoint and how (`ModelChoice`), on which device, in which dtype,
quantized or not, and the spec its vectors will carry.

The dtype rule lives in `choose_dtype` alone: a dtype asked for wins; quantized weights keep
their other layers in bfloat16 on a CPU and float16 on a GPU; otherwise a GPU gets float16 (the
model card's) and a CPU float32 while the weights fit in half its free memory, else bfloat16.
`load_pretrained` and `spec_from_config` (what the Ray driver and `ModelChoice.spec_on` ask, the
weights never loaded) both follow it, so a spec read from the config is the loaded encoder's.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_MODEL, MAX_BATCH_TOKENS
from ..errors import InputError, ModelLoadError
from ..spec import Spec
from . import checkpoint, prompts
from .hub import hub_options

if TYPE_CHECKING:
    from .encoder import E5VEncoder

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


@dataclass(frozen=True)
class ModelChoice:
    """Which checkpoint to load and how: what the CLI's model options make, the engine holds,
    `check` loads and a Ray actor loads itself (the driver never loads the weights)."""

    model: str | None = None  # hub id or local directory; None: the index's, else DEFAULT_MODEL
    revision: str | None = None
    device: str | None = "auto"
    dtype: Any = None  # float16, bfloat16, float32 (or a torch dtype); None: the device's default
    batch_size: int | None = None
    max_batch_tokens: int = MAX_BATCH_TOKENS
    quantize: str | None = None  # int8 or nf4: the language model's linear layers

    def for_index(self, stored: dict | None) -> ModelChoice:
        """This choice with the model filled in: given, it stays; else the one an index's
        spec (`stored`) records, with its revision, dtype and quantization unless those are
        given; else DEFAULT_MODEL."""
        if self.model is not None:
            return self
        if not stored or not stored.get("model"):
            return replace(self, model=DEFAULT_MODEL)
        return replace(
            self,
            model=str(stored["model"]),
            revision=self.revision or stored.get("revision"),
            dtype=self.dtype or stored.get("dtype"),
            quantize=self.quantize or stored.get("quantization"),
        )

    def gone(self) -> str | None:
        """What to say when the model is a local directory that no longer exists."""
        model = str(self.model)
        if _looks_local(model) and not Path(model).expanduser().is_dir():
            return (
                f"this index was built with {model}, which no longer exists; pass --model (the "
                "same checkpoint from where it is now)"
            )
        return None

    def load(self) -> E5VEncoder:
        from .encoder import E5VEncoder

        return E5VEncoder.from_pretrained(
            self.model or DEFAULT_MODEL,
            self.revision,
            self.device,
            self.dtype,
            quantize=self.quantize,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
        )

    def spec_on(self, device: str) -> Spec:
        """The spec an encoder loaded on `device` would report, from the config alone."""
        model = self.model or DEFAULT_MODEL
        return spec_from_config(model, self.revision, device, self.dtype, self.quantize)


def _looks_local(model: str) -> bool:
    """A directory, not a hub id (`owner/name`): absolute, ~ or . first, or more than one /."""
    return model.startswith(("/", "~", ".")) or model.count("/") > 1 or "\\" in model


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype, device: str):
    """A dtype's name (or a torch dtype) as a torch dtype; None: float16 on a GPU, float32 on a
    CPU (fp16 matmuls are slow there)."""
    import torch

    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}: use one of float16, bfloat16, float32")
    return getattr(torch, name)


def choose_dtype(dtype, device: str, quantize: str | None = None, config=None, log_as=None):
    """The torch dtype a model loads in on `device` (resolved: cpu, cuda, ...): the one rule
    (see the module's docstring). The CPU's memory rule needs the checkpoint's `config`; without
    one a CPU gets float32. `log_as` (the model's name): a log line says when and why a CPU
    gets bfloat16."""
    if quantize and dtype is None:
        dtype = "bfloat16" if device == "cpu" else "float16"
    elif dtype is None and device == "cpu" and config is not None:
        parameters, available = estimated_parameters(config), available_memory()
        dtype = cpu_dtype(parameters, available)
        if dtype == "bfloat16" and log_as is not None:
            logging.getLogger(__name__).warning(
                "loading %s in bfloat16 on the CPU: in float32 its %.1f GB of weights would "
                "take over half of the %.1f GB available (--dtype float32 to insist)",
                log_as,
                4 * parameters / 1e9,
                available / 1e9,
            )
    return resolve_dtype(dtype, device)


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


def vector_spec(model, revision, fingerprint, dim, dtype, quantization=None) -> Spec:
    """The spec of vectors made by `model` (its revision and weights' fingerprint) in `dtype`
    (a torch dtype or its name), quantized or not, with this transformers and E5-V's prompts."""
    import transformers

    return Spec(
        model=str(model),
        revision=revision,
        fingerprint=fingerprint,
        dim=int(dim),
        dtype=str(dtype).removeprefix("torch."),
        prompt_version=prompts.PROMPT_VERSION,
        transformers=transformers.__version__,
        quantization=quantization,
    )


def spec_from_config(model: str, revision=None, device="cpu", dtype=None, quantize=None) -> Spec:
    """The spec an encoder would report, read from the checkpoint's config alone."""
    from transformers import LlavaNextConfig

    config = LlavaNextConfig.from_pretrained(
        model, revision=revision, **hub_options(model, revision)
    )
    device = resolve_device(device)
    torch_dtype = choose_dtype(dtype, device, quantize, config)
    revision = revision or getattr(config, "_commit_hash", None)
    fingerprint = checkpoint.fingerprint(model, revision)
    dim = config.text_config.hidden_size
    return vector_spec(model, revision, fingerprint, dim, torch_dtype, quantization=quantize)


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
    hub = hub_options(model, revision)
    needs_config = dtype is None and device == "cpu" and not quantize
    config = _config_or_none(model, revision, hub) if needs_config else None
    torch_dtype = choose_dtype(dtype, device, quantize, config, log_as=model)
    options = {}
    if quantize:
        options = {"quantization_config": quantization_config(quantize, torch_dtype)}
    model_class = LlavaNextForConditionalGeneration if full else LlavaNextModel
    try:
        # The PIL image backend everywhere: a GPU box with torchvision then preprocesses
        # exactly like a laptop without (and anyres.py makes both E5-V's own pixels).
        processor = LlavaNextProcessor.from_pretrained(
            model, revision=revision, backend="pil", **hub
        )
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
                **hub,
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


def _config_or_none(model, revision, hub):
    from transformers import LlavaNextConfig

    try:
        return LlavaNextConfig.from_pretrained(model, revision=revision, **hub)
    except (OSError, ValueError):
        return None  # from_pretrained names the problem when the weights load


@contextmanager
def _quiet_transformers():
    """No load report (it lists the lm_head skipped on purpose); a loading bar only on a
    terminal, where it helps with 16 GB of weights."""
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    bar = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    if not sys.stderr.isatty():
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)
        if bar:
            transformers_logging.enable_progress_bar()
