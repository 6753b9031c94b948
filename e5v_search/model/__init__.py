"""The model layer: E5-V's prompts, its pixels and its forward pass.

prompts (the templates, byte for byte), anyres (4.41.2's padding), preprocess (decoding and
token counts without weights), batching (token budgets), checkpoint (legacy repairs,
fingerprint), loading (ModelChoice, device, the dtype rule, quantization, load_pretrained),
hub (the hub asked only when it answers, else the cache),
encoder (E5VEncoder), recipe (the model card's code, for comparison), check (`e5v-search
check`) and samples (the check's inputs). Images are opened by the base floor's `images`.
Nothing here knows about indexes.
"""
