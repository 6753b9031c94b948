"""E5-V's pixels: anyres exactly as transformers 4.41.2 made them, the pipeline its weights were
trained and evaluated with (E5-V's repository pins that version).

transformers 5.x pads an odd resize remainder unevenly, `(d // 2, d // 2 + 1)`, to reach the
chosen pinpoint exactly. 4.41.2 padded `(d // 2, d // 2)`, leaving the padded image one pixel
short, so its last row or column of tiles was one pixel short too and was then resized and
centre-cropped to the crop size like any tile. With `ceil` in the resize, odd remainders are
common: 11 of 18 photo sizes, among them Flickr30K's and COCO's 500x375, 500x333 and 640x427,
got other pixels (max |diff| 3.1-3.7 in normalised units). With the padding below, every size
is bit-identical to 4.41.2 (tests/test_pixels.py, fixture from scripts/make_pixel_fixture.py).
Token counts never differed: they follow the pinpoint, not the padding.

Imports transformers: import this module only where a processor is used.
"""

from __future__ import annotations

from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)


class E5VImageProcessor(LlavaNextImageProcessorPil):
    """LLaVA-NeXT's PIL image processor with 4.41.2's anyres padding."""

    def _get_padding_size(self, original_resolution: tuple, target_resolution: tuple):
        (height, width), (target_height, target_width) = original_resolution, target_resolution
        top, left = (target_height - height) // 2, (target_width - width) // 2
        return (top, top), (left, left)


def use_e5v_pixels(processor) -> None:
    """Give `processor` (a LlavaNextProcessor) E5-V's image processor, in place: everything that
    calls it, the encoder, the preprocessing workers and the model card's recipe alike, then
    gets the same pixels."""
    current = processor.image_processor
    if not isinstance(current, E5VImageProcessor):
        processor.image_processor = E5VImageProcessor(**current.to_dict())
