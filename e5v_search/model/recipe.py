"""The model card's recipe, kept as the reference the encoder is tested and benchmarked against.

It is the seed's code with only the keyword-argument change transformers 5.x needs
(`processor(text=..., images=...)`); `padding_side` exists because E5-V's own evaluation code sets
left padding, and the tests show what right padding does.
"""

from __future__ import annotations

from .prompts import IMAGE_PROMPT, TEXT_PROMPT


def recipe_embed_texts(model, processor, texts, device="cpu", padding_side=None):
    import torch
    import torch.nn.functional as F

    if padding_side:
        processor.tokenizer.padding_side = padding_side
    prompts = [TEXT_PROMPT.replace("<sent>", text) for text in texts]
    inputs = processor(text=prompts, return_tensors="pt", padding=True).to(device)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, return_dict=True)
        return F.normalize(out.hidden_states[-1][:, -1, :], dim=-1)


def recipe_embed_images(model, processor, images, device="cpu", padding_side=None):
    import torch
    import torch.nn.functional as F

    if padding_side:
        processor.tokenizer.padding_side = padding_side
    inputs = processor(
        text=[IMAGE_PROMPT] * len(images), images=images, return_tensors="pt", padding=True
    ).to(device)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, return_dict=True)
        return F.normalize(out.hidden_states[-1][:, -1, :], dim=-1)
