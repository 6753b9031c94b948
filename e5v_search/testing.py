"""A tiny LLaVA-NeXT checkpoint of E5-V's architecture, built offline and deterministically.

The real weights (8B) cannot be downloaded everywhere, so the tests, the demo and the CPU
benchmarks run the real encoder on this checkpoint. It keeps what matters to the engine: a
byte-level BPE tokenizer carrying the Llama-3 special tokens (so the prompts tokenise the same
way), `<image>` and a pad token, a Llama language model, a CLIP vision tower, anyres tiling and
the real checkpoint's traps (`legacy=True`):

- `image_token_index` one past the end of the embedding table (and `<pad>` past it too);
- a 2024-style processor config without `patch_size`, `vision_feature_select_strategy` and
  `num_additional_image_tokens`, a 2024-style `config.json` (`torch_dtype`, `rope_theta`);
- a tokenizer config that says padding right;
- weights stored in fp16.

A clean checkpoint (`legacy=False`) has the same weights (rounded to fp16 in both, so the two
give the same embeddings), a complete processor config, left padding and fp32 weights.
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw

BUILDER_VERSION = "1"
REAL_CROP = 336
REAL_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
TINY_CROP = 56
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
LLAMA3_BASE_VOCAB = 128000

# Llama-3's 256 special tokens in their order (ids 128000-128255 in the real tokenizer).
LLAMA3_SPECIALS = (
    ["<|begin_of_text|>", "<|end_of_text|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
)

_WORDS = (
    "a an the of in on at with and or to from by for is are was sitting standing running "
    "lying dog cat bird horse man woman child people car bus train boat plane grass snow beach "
    "water sea river road street city park field tree forest mountain sky red blue green yellow "
    "black white brown small large two three group photo picture image sentence word summary "
    "above one modify this describe desribe modified user assistant playing eating holding "
    "looking walking riding next near front top under over table food plate ball"
).split()


def _train_tokenizer(base_vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = [" ".join(_WORDS[i:] + _WORDS[:i]) for i in range(len(_WORDS))]
    corpus += [w.capitalize() + "." for w in _WORDS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(base_vocab, 600),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    # Pad the BPE vocabulary to its fixed size with entries no merge can reach, so that the
    # special tokens land at the same offsets as in Llama-3 (128000.. with the real vocabulary).
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), base_vocab):
        vocab[f"<|unused_{i}|>"] = i
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens(LLAMA3_SPECIALS + ["<image>", "<pad>"])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return tok


def build_tiny_checkpoint(
    path: str | Path,
    *,
    legacy: bool = False,
    real_geometry: bool = False,
    real_vocab: bool = False,
    hidden_size: int = 64,
    seed: int = 0,
    initializer_range: float = 0.3,
) -> Path:
    """Write a tiny E5-V-shaped checkpoint to `path` and return it. Same arguments, same bytes."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        PreTrainedTokenizerFast,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    base_vocab = LLAMA3_BASE_VOCAB if real_vocab else 512
    tok = _train_tokenizer(base_vocab)
    image_id = tok.token_to_id("<image>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        padding_side="right" if legacy else "left",
        model_max_length=8192,
    )

    crop = REAL_CROP if real_geometry else TINY_CROP
    pinpoints = [[h * crop // REAL_CROP, w * crop // REAL_CROP] for h, w in REAL_PINPOINTS]
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192 if real_geometry else 1024,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=tok.token_to_id("<|begin_of_text|>"),
        eos_token_id=tok.token_to_id("<|eot_id|>"),
        tie_word_embeddings=False,
        # A wide init makes every token's context move the pooled vector, so tests can tell
        # inputs apart (at 0.02 all embeddings of a 2-layer model are nearly the same); the
        # trained model (training.py) starts from the usual 0.02.
        initializer_range=initializer_range,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=crop,
        patch_size=14,
        projection_dim=32,
        hidden_act="quick_gelu",
    )
    config = LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    with torch.no_grad():
        # Clean and legacy checkpoints must hold the same values: round everything to fp16.
        for p in model.parameters():
            p.copy_(p.half().float())
    if legacy:
        model = _cut_vocabulary(model, rows=image_id).half()
    with _quiet_progress():
        model.save_pretrained(path)

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": crop},
        crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=pinpoints,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(path)
    if legacy:
        _make_legacy_configs(path)
    return path


@contextmanager
def _quiet_progress():
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.enable_progress_bar()


def _cut_vocabulary(model, rows: int):
    """The same model with embedding and lm_head tables cut to `rows` (so `<image>` lies past)."""
    from transformers import LlavaNextForConditionalGeneration

    config = model.config
    config.text_config.vocab_size = rows
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("embed_tokens.weight", "lm_head.weight")):
            state[key] = value[:rows]
    cut = LlavaNextForConditionalGeneration(config)
    cut.load_state_dict(state)
    return cut


def _make_legacy_configs(path: Path) -> None:
    """Rewrite the configs the way 2024-era checkpoints (royokong/e5-v) have them."""
    processor_config = json.loads((path / "processor_config.json").read_text())
    (path / "processor_config.json").unlink()
    image_config = processor_config["image_processor"]
    image_config["processor_class"] = "LlavaNextProcessor"
    _write_json(path / "preprocessor_config.json", image_config)

    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    tok_config.update(tokenizer_class="PreTrainedTokenizerFast", padding_side="right")
    _write_json(path / "tokenizer_config.json", tok_config)

    config = json.loads((path / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype", "float16")
    text = config["text_config"]
    text["rope_theta"] = text.pop("rope_parameters")["rope_theta"]
    _write_json(path / "config.json", config)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def cached_tiny_checkpoint(cache_dir: str | Path | None = None, **options) -> Path:
    """The checkpoint for these options in a cache directory, built on first use."""
    import transformers

    from .config import cache_home

    root = Path(cache_dir) if cache_dir else cache_home() / "tiny-models"
    name = "-".join(
        [f"v{BUILDER_VERSION}", f"tf{transformers.__version__}"]
        + [f"{k}={v}" for k, v in sorted(options.items())]
    )
    target = root / name
    if not (target / "config.json").exists():
        tmp = root / (name + ".tmp")
        build_tiny_checkpoint(tmp, **options)
        tmp.replace(target)  # whole-directory rename: a half-built cache is never used
    return target


def make_sample_images(folder: str | Path) -> list[Path]:
    """A few small drawn images of different shapes (3, 4 and 5 anyres crops at real geometry)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = [
        ("red-square.png", (336, 336), (200, 30, 30)),
        ("green-landscape.png", (640, 480), (40, 160, 60)),
        ("blue-portrait.png", (480, 640), (30, 60, 200)),
        ("yellow-wide.png", (1000, 300), (220, 200, 40)),
    ]
    paths = []
    for name, size, color in specs:
        image = Image.new("RGB", size, (245, 245, 240))
        draw = ImageDraw.Draw(image)
        w, h = size
        draw.ellipse([w // 5, h // 5, 4 * w // 5, 4 * h // 5], fill=color)
        draw.rectangle([0, 0, w // 6, h // 6], fill=tuple(255 - c for c in color))
        image.save(folder / name)
        paths.append(folder / name)
    return paths


COLORS = {
    "red": (200, 30, 30),
    "green": (40, 160, 60),
    "blue": (30, 60, 200),
    "yellow": (220, 200, 40),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "stripe")
BACKGROUNDS = {"grey": (128, 128, 128), "pale": (240, 235, 220)}


def make_sample_corpus(folder: str | Path) -> dict[str, Path]:
    """A small corpus like a user's: 48 drawn images (6 colours x 4 shapes x 2 backgrounds) in
    nested folders, and a captions.jsonl describing each, with metadata."""
    folder = Path(folder)
    captions = []
    for color in COLORS:
        for shape in SHAPES:
            for background in BACKGROUNDS:
                name = f"{color}-{shape}-{background}.png"
                path = folder / "images" / background / name
                path.parent.mkdir(parents=True, exist_ok=True)
                draw_shape(color, shape, background).save(path)
                text = f"A {color} {shape} on a {background} background."
                image = f"images/{background}/{name}"
                captions.append({"text": text, "image": image, "color": color, "shape": shape})
    lines = [json.dumps(c) for c in captions]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return {"images": folder / "images", "captions": folder / "captions.jsonl"}


def draw_shape(color: str, shape: str, background: str, rng=None) -> Image.Image:
    """A `color` `shape` on a `background` (names from COLORS, SHAPES, BACKGROUNDS), 160x120.
    With `rng` (a random.Random) the shape moves and changes size, for training."""
    image = Image.new("RGB", (160, 120), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    scale = rng.uniform(0.75, 1.1) if rng else 1.0
    dx, dy = (rng.randint(-16, 16), rng.randint(-8, 8)) if rng else (0, 0)

    def at(x, y):  # around the centre (80, 60)
        return (80 + dx + (x - 80) * scale, 60 + dy + (y - 60) * scale)

    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse([*at(40, 20), *at(120, 100)], fill=fill)
    elif shape == "square":
        draw.rectangle([*at(40, 20), *at(120, 100)], fill=fill)
    elif shape == "triangle":
        draw.polygon([at(80, 15), at(130, 105), at(30, 105)], fill=fill)
    else:  # a stripe spans the width; only its height and place change
        top, bottom = at(0, 45)[1], at(0, 75)[1]
        draw.rectangle([0, top, 160, bottom], fill=fill)
    return image


# How one photo is copied in a real library: what near-duplicate collapse must catch.
COPY_KINDS = ("half-size", "jpeg-q90", "jpeg-q60", "webp-q80", "exif-rotated-6", "exif-rotated-8")


def photo_copies(source: str | Path, folder: str | Path) -> dict[str, Path]:
    """Copies of the image at `source` in `folder`, one per COPY_KINDS: resized to half, JPEG at
    quality 90 and 60, WebP at 80, and stored turned a quarter either way with the EXIF
    Orientation (6, 8) that shows them upright again, as a phone writes them."""
    from PIL import ImageOps

    source, folder = Path(source), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = ImageOps.exif_transpose(Image.open(source)).convert("RGB")
    stem = source.stem
    paths = {kind: folder / f"{stem}-{kind}" for kind in COPY_KINDS}
    half = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.LANCZOS)
    half.save(paths["half-size"].with_suffix(".png"))
    image.save(paths["jpeg-q90"].with_suffix(".jpg"), quality=90)
    image.save(paths["jpeg-q60"].with_suffix(".jpg"), quality=60)
    image.save(paths["webp-q80"].with_suffix(".webp"), quality=80)
    # Orientation 6 shows the stored pixels turned 90 degrees clockwise, 8 counter-clockwise.
    for kind, orientation, stored in (
        ("exif-rotated-6", 6, Image.Transpose.ROTATE_90),
        ("exif-rotated-8", 8, Image.Transpose.ROTATE_270),
    ):
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.transpose(stored).save(paths[kind].with_suffix(".jpg"), quality=95, exif=exif)
    suffix = {"half-size": ".png", "webp-q80": ".webp"}
    return {kind: path.with_suffix(suffix.get(kind, ".jpg")) for kind, path in paths.items()}


def clustered_vectors(n: int, dim: int, clusters: int = 50, spread: float = 0.5, seed: int = 0):
    """Unit vectors around random cluster centres: like embeddings, unlike uniform noise (on
    which every ANN index looks equally bad)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    vectors = centres[rng.integers(0, clusters, size=n)] + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def index_file(folder: str | Path, modality: str, part: str = "delta") -> Path:
    """A file the manifest names for one modality's index: its "delta", "masks", "template",
    or "segment" (the first sealed segment's .faiss)."""
    entry = json.loads((Path(folder) / "manifest.json").read_text())["indexes"][modality]
    name = f"{entry['segments'][0]}.faiss" if part == "segment" else entry[part]
    return Path(folder) / name


# Rare terms (keyword and hybrid search): bench_hybrid.py and tests/test_quality.py.
GIVEN = ["Åke", "Britt", "Cecilia", "Dag", "Elin", "Folke", "Gun", "Hans", "Ingrid", "Jöns"]
FIRST = ["Lind", "Berg", "Holm", "Sjö", "Ek", "Dahl", "Ström", "Nord", "Fager", "Al"]
SECOND = ["qvist", "gren", "berg", "ström", "lund", "man", "dal", "blad"]
FILLER = ["payment due in 30 days", "shipped by truck", "paid by card", "see the attached list"]


def rare_term_notes(n: int, seed: int = 0):
    """(notes, queries): each note holds a code, a name and an order number no other holds;
    queries are (kind, text, the note's index)."""
    rng = random.Random(seed)
    names = [f"{g} {a}{b}" for g in GIVEN for a in FIRST for b in SECOND]
    rng.shuffle(names)
    codes, notes, queries = set(), [], []
    while len(codes) < n:
        letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))
        codes.add(f"{letters}-{rng.randrange(1000, 9999)}-{rng.choice('ABCDEF')}")
    for i, code in enumerate(sorted(codes)):
        number = str(100000 + 37 * i)
        name = names[i % len(names)]
        notes.append(f"Invoice {code} from {name}, order {number}, {rng.choice(FILLER)}")
        queries += [("code", code, i), ("name", name, i), ("number", number, i)]
    return notes, queries
