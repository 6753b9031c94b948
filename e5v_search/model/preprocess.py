"""Turning inputs into model inputs without the model: what a CPU worker needs.

`Preprocessor` holds only the processor and the model's config (kilobytes, not 16 GB), so image
decoding, anyres cropping and token counting can run in threads or in separate CPU processes
(the Ray pipeline) ahead of the encoder that runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import MAX_PIXELS
from ..images import load_image
from . import checkpoint, prompts
from .hub import hub_options


@dataclass
class PreparedImage:
    """One image decoded and preprocessed: its anyres crops, its size and its prompt's length."""

    pixel_values: Any  # torch.Tensor or numpy array (crops, 3, crop, crop)
    size: tuple[int, int]  # (height, width)
    n_tokens: int


class Preprocessor:
    def __init__(self, processor, config):
        from .anyres import use_e5v_pixels

        use_e5v_pixels(processor)  # E5-V's own pixels, whichever path an image takes
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = config.image_token_id
        self.repairs = checkpoint.repair_processor(processor, config)
        ids = self.tokenizer(prompts.IMAGE_PROMPT).input_ids
        at = ids.index(self.image_token_id)
        self._around_image = (ids[:at], ids[at + 1 :])  # the prompt around its <image>
        self.image_prompt_tokens = len(ids) - 1

    @classmethod
    def from_pretrained(cls, model: str, revision: str | None = None) -> Preprocessor:
        from transformers import LlavaNextConfig, LlavaNextProcessor

        hub = hub_options(model, revision)
        processor = LlavaNextProcessor.from_pretrained(
            model, revision=revision, backend="pil", **hub
        )
        return cls(processor, LlavaNextConfig.from_pretrained(model, revision=revision, **hub))

    def count_image_tokens(self, sizes: list[tuple[int, int]]) -> list[int]:
        """Image placeholder tokens for images of these (height, width), without any pixels."""
        if not sizes:
            return []
        counts = self.processor._get_num_multimodal_tokens(image_sizes=sizes)
        return list(counts["num_image_tokens"])

    def prepare_image(self, image, max_pixels: int = MAX_PIXELS) -> PreparedImage:
        """Decode and preprocess one image; thread-safe. Raises InputError naming a bad file."""
        rgb = load_image(image, max_pixels)
        pixels = self.processor.image_processor(images=[rgb], return_tensors="pt")["pixel_values"]
        size = (rgb.height, rgb.width)
        n_tokens = self.image_prompt_tokens + self.count_image_tokens([size])[0]
        return PreparedImage(pixels[0], size, n_tokens)

    def image_prompt_ids(self, prepared: PreparedImage) -> list[int]:
        """The image prompt's token ids with <image> expanded, as the processor would make them."""
        n_image = prepared.n_tokens - self.image_prompt_tokens
        before, after = self._around_image
        return before + [self.image_token_id] * n_image + after
