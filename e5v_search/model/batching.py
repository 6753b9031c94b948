"""Group items into batches under a token budget, longest first, to cut padding."""

from __future__ import annotations


def plan_batches(
    lengths: list[int], max_tokens: int, max_items: int | None = None
) -> list[list[int]]:
    """Indices of `lengths` grouped so that each batch's padded size (items x longest) fits
    `max_tokens`; an item longer than the budget goes alone. Longest batches come first, so a
    budget too large for the device fails at once rather than at the end of a long run."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in order:
        longest = lengths[batch[0]] if batch else lengths[index]
        full = max_items is not None and len(batch) >= max_items
        if batch and (full or (len(batch) + 1) * longest > max_tokens):
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches
