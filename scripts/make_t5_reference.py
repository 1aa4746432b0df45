#!/usr/bin/env python3
"""References for plugins/flow's T5 encoder tests (issue 30): a tiny random T5 v1.1 encoder
(transformers' T5EncoderModel, gated-GELU like T5-XXL), a small T5-shaped tokenizer.json, and
for a few prompts the token ids and last_hidden_state the reference libraries give.

    python3 scripts/make_t5_reference.py          # writes tests/data/t5-tiny/
    python3 scripts/make_t5_reference.py --real-tokenizer DIR
        # also real_tokenizer.json: ids of the real T5 tokenizer in DIR (from
        # scripts/t5_tokenizer_from_pypi.py) for REAL_PROMPTS, read as diffusers reads it

Needs `pip install sentencepiece` (for the spiece.model below).

Laid out as the T5 parts of a diffusers SD3 folder: text_encoder_3/ (config.json,
model.safetensors: the split-file layout ComfyUI's t5xxl_*.safetensors also use),
tokenizer_3/ (tokenizer.json, tokenizer_config.json); beside them single_file.safetensors (the
same weights under `text_encoders.t5xxl.transformer.`), reference.json and hidden.safetensors,
and spiece_only/: a SentencePiece spiece.model (trained by sentencepiece on the same text, T5's
special ids) with a tokenizer_config.json, as older T5 folders ship without tokenizer.json;
its reference ids are those `T5TokenizerFast.from_pretrained(spiece_only)` converts it to.

What each reference is:
- `ids`: the token ids as diffusers' StableDiffusion3Pipeline / FluxPipeline `_get_t5_prompt_embeds`
  make them (`tokenizer(prompt, padding="max_length", max_length=L, truncation=True)`) for plain
  prompts; for prompts with emphasis, A1111's `Sd3T5.tokenize_line` (modules/models/sd3/
  sd3_cond.py: each parsed fragment tokenized without special tokens, BREAK dropped, `</s>`,
  `<pad>` to L) with diffusers' truncation (the last of the L ids stays `</s>`). The script
  checks that both give the same ids wherever diffusers' can be applied.
- `hidden`: T5EncoderModel(ids).last_hidden_state, no attention mask (as diffusers calls it);
  for prompts with emphasis, Forge's "Original" rule on top (backend/text_processing/
  emphasis.py `EmphasisOriginal`: z·w, then z·(mean(z)/mean(z·w)), means over the whole
  prompt's [L, d_model], padding rows included). The plain prompt also in fp16 and bf16
  (keys `plain@float16`, `plain@bfloat16`, stored as fp32), and the plain prompt through the
  fp8 copy of the weights, t5xxl_fp8_e4m3fn.safetensors (key `plain@fp8_e4m3fn`).

The tokenizer: no real T5 tokenizer ships with the reference libraries, so a Unigram model is
built here (HF `tokenizers`) from a fixed text, in T5's shape: `<pad>`=0, `</s>`=1, `<unk>`=2,
no normalizer (see `build_tokenizer`), WhitespaceSplit + Metaspace("▁"), template "$A </s>", sentinel `<extra_id_N>` tokens last
(N descending, as T5's). It is saved through transformers' T5TokenizerFast and read back with
`T5TokenizerFast.from_pretrained` as diffusers does.
"""
from __future__ import annotations

import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models  # noqa: E402
from tokenizers import pre_tokenizers, processors  # noqa: E402
from transformers import T5Config, T5EncoderModel, T5TokenizerFast  # noqa: E402

from make_family_reference import parse_prompt_attention  # noqa: E402  A1111's parser

OUT = os.path.join(HERE, "..", "tests", "data", "t5-tiny")
ENCODER_DIR = os.path.join(OUT, "text_encoder_3")
TOKENIZER_DIR = os.path.join(OUT, "tokenizer_3")
SEED = 30
EXTRA_IDS = 4
# The single-file checkpoint prefix (SD3 / Flux all-in-one files; diffusers
# single_file_utils `convert_sd3_t5_checkpoint_to_diffusers` strips exactly this).
SINGLE_FILE_PREFIX = "text_encoders.t5xxl.transformer."

CORPUS = [
    "a photo of an astronaut riding a horse on the moon",
    "a red fox standing in deep snow, winter forest, soft morning light",
    "portrait of an old fisherman, detailed wrinkles, dramatic lighting, oil painting",
    "a castle on a hill at sunset, clouds, birds, masterpiece, best quality",
    "cyberpunk city street at night, neon signs, rain, reflections on the wet ground",
    "a bowl of fruit on a wooden table, apples, oranges, grapes, still life",
    "a cat sitting on a windowsill looking at the garden, flowers, butterflies",
    "mountains and a lake, a small boat, mist over the water, landscape photography",
    "an owl with big yellow eyes perched on a branch under the full moon",
    "a futuristic robot painting a picture of a sunflower in a bright studio",
]


def unigram_vocab() -> list[tuple[str, float]]:
    """A fixed SentencePiece-style vocabulary from CORPUS: every character, "▁" + each word
    of up to five letters or seen twice or more, a few suffixes; scores are log frequencies. (Built, not trained: the
    `tokenizers` Unigram trainer differs from run to run.)"""
    words = " ".join(CORPUS).replace(",", " ,").split()
    counts: dict[str, int] = {}
    for word in words:
        counts["▁" + word] = counts.get("▁" + word, 0) + 1
        for ch in word:
            counts[ch] = counts.get(ch, 0) + 1
    for suffix in ("ing", "ed", "er", "es", "s", "ly", "ow"):
        counts[suffix] = sum(w.endswith(suffix) for w in words) + 1
    counts["▁"] = len(words)
    pieces = [p for p, n in counts.items() if not p.startswith("▁") or len(p) <= 6 or n >= 2]
    total = sum(counts[p] for p in pieces)
    pieces.sort(key=lambda p: (-counts[p], p))
    return [(p, round(math.log(counts[p] / total), 6)) for p in pieces]


def build_tokenizer() -> Tokenizer:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + unigram_vocab()
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    # No normalizer: transformers 5 rebuilds a T5 tokenizer from tokenizer.json keeping only a
    # SentencePiece `Precompiled` normalizer (which needs sentencepiece to make); a file with
    # another normalizer would read differently there and in the `tokenizers` crate.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(EXTRA_IDS))])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return tok


SPIECE_DIR = os.path.join(OUT, "spiece_only")
SPIECE_PROMPTS = [
    "a photo of an astronaut riding a horse on the moon",
    "Ｃａｓｔｌｅ  on   a hill①, café ×",
    "x <extra_id_0> y",
    "cat  ",
    "",
]


def spiece_reference() -> list[dict]:
    """A sentencepiece Unigram model with T5's ids (<pad> 0, </s> 1, <unk> 2, no <s>) and the
    ids transformers gives after converting it."""
    import io

    import sentencepiece as spm

    os.makedirs(SPIECE_DIR, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=model, vocab_size=120,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        character_coverage=1.0, minloglevel=2,
    )
    with open(os.path.join(SPIECE_DIR, "spiece.model"), "wb") as f:
        f.write(model.getvalue())
    config = {"tokenizer_class": "T5Tokenizer", "extra_ids": EXTRA_IDS // 2, "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "<pad>"}
    with open(os.path.join(SPIECE_DIR, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    tok = T5TokenizerFast.from_pretrained(SPIECE_DIR)
    return [{"prompt": p, "ids": tok(p)["input_ids"]} for p in SPIECE_PROMPTS]


def save_tokenizer(tok: Tokenizer) -> T5TokenizerFast:
    fast = T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=EXTRA_IDS,
        model_max_length=512,
    )
    fast.save_pretrained(TOKENIZER_DIR)
    # Read back as diffusers does (`T5TokenizerFast.from_pretrained(tokenizer_3)`).
    return T5TokenizerFast.from_pretrained(TOKENIZER_DIR)


def random_model(vocab: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = T5EncoderModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # not all ones: the norms' weights must be read
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def a1111_tokens(tok: T5TokenizerFast, prompt: str, length: int):
    """A1111 `Sd3T5.tokenize_line` (fragments without special tokens, BREAK dropped, `</s>`,
    `<pad>`), truncated as diffusers truncates (keep the closing `</s>`)."""
    parsed = parse_prompt_attention(prompt)
    pieces = tok([text for text, _ in parsed], truncation=False, add_special_tokens=False)
    ids: list[int] = []
    weights: list[float] = []
    for piece_ids, (text, weight) in zip(pieces["input_ids"], parsed):
        if text == "BREAK" and weight == -1:
            continue
        ids += piece_ids
        weights += [float(weight)] * len(piece_ids)
    ids, weights = ids[: length - 1], weights[: length - 1]
    ids.append(tok.eos_token_id)
    weights.append(1.0)
    pad = length - len(ids)
    return ids + [tok.pad_token_id] * pad, weights + [1.0] * pad, parsed


def forge_emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Forge backend/text_processing/emphasis.py `EmphasisOriginal.after_transformers`."""
    original_mean = z.mean()
    z = z * weights.reshape(weights.shape + (1,)).expand(z.shape)
    new_mean = z.mean()
    return z * (original_mean / new_mean)


def long_prompt() -> str:
    words = " ".join(CORPUS).replace(",", "").split()
    return "(" + " ".join(words[:6]) + ":1.2), " + " ".join((words * 3)[6:300])


CASES = [
    ("plain", "a photo of an astronaut riding a horse on the moon", 256),
    ("emphasis", "a (red fox:1.3) in [deep] snow, ((masterpiece)), \\(literal\\)", 256),
    ("long", long_prompt(), 256),
    ("empty", "", 256),
    ("break", "a cat on a windowsill BREAK a garden with flowers", 256),
    ("normalized", "Ｃａｓｔｌｅ  on   a hill①, café ×", 256),
    ("flux_dev", "an owl perched on a branch under the full moon", 512),
]


REAL_PROMPTS = [
    "a photo of an astronaut riding a horse on the moon",
    "(masterpiece:1.2), best quality, 8k, ultra-detailed, [blurry]",
    "Ｃａｓｔｌｅ  on   a hill①, café ×",
    "Über straße naïve façade — “quotes” … ½",
    "tab\there\nnewline",
    "日本語のテキスト",
    "<extra_id_0> x</s>y",
    "",
]


def real_tokenizer_reference(folder: str) -> None:
    """Ids of the real tokenizer (`T5TokenizerFast.from_pretrained`, as diffusers loads
    tokenizer_3/) per parsed fragment and for whole prompts at L=256, for the gated Rust test."""
    tok = T5TokenizerFast.from_pretrained(folder)
    cases = []
    for prompt in REAL_PROMPTS:
        ids, weights, parsed = a1111_tokens(tok, prompt, 256)
        whole = tok(prompt, padding="max_length", max_length=256, truncation=True)["input_ids"]
        cases.append(
            {"prompt": prompt, "parsed": parsed, "ids": ids, "weights": weights, "whole": whole}
        )
    with open(os.path.join(OUT, "real_tokenizer.json"), "w") as f:
        json.dump({"source": "scripts/make_t5_reference.py --real-tokenizer", "cases": cases},
                  f, indent=1, ensure_ascii=False)
        f.write("\n")


def main() -> None:
    if sys.argv[1:2] == ["--real-tokenizer"]:
        real_tokenizer_reference(sys.argv[2])
        return
    for folder in (OUT, ENCODER_DIR, TOKENIZER_DIR):
        os.makedirs(folder, exist_ok=True)
    raw = build_tokenizer()
    tok = save_tokenizer(raw)
    file_tok = Tokenizer.from_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))
    model = random_model(len(tok))
    model.save_pretrained(ENCODER_DIR, safe_serialization=True)
    state = load_file(os.path.join(ENCODER_DIR, "model.safetensors"))
    # The single-file layout: everything under one prefix, the embedding as
    # `encoder.embed_tokens.weight` (the key A1111's sd3_cond.py looks for) instead of `shared`.
    single = {}
    for key, value in state.items():
        key = "encoder.embed_tokens.weight" if key == "shared.weight" else key
        single[SINGLE_FILE_PREFIX + key] = value.clone()
    save_file(single, os.path.join(OUT, "single_file.safetensors"))

    cases = []
    hidden = {}
    for name, prompt, length in CASES:
        ids, weights, parsed = a1111_tokens(tok, prompt, length)
        emphasised = any(w != 1.0 for _, w in parsed) or any(t == "BREAK" for t, _ in parsed)
        if not emphasised:
            want = tok(prompt, padding="max_length", max_length=length, truncation=True)
            assert want["input_ids"] == ids, (name, want["input_ids"], ids)
            plain = file_tok.encode(prompt).ids  # the raw file, as our Rust side reads it
            assert len(plain) > length or plain == ids[: len(plain)], (name, plain, ids)
        ids_t = torch.tensor([ids])
        with torch.no_grad():
            z = model(input_ids=ids_t).last_hidden_state
        if any(w != 1.0 for w in weights):
            z = forge_emphasis(z, torch.tensor([weights]))
        hidden[name] = z[0].contiguous()
        cases.append(
            {
                "name": name,
                "prompt": prompt,
                "max_length": length,
                "parsed": parsed,
                "ids": ids,
                "weights": weights,
            }
        )
    # The plain prompt in half precision (transformers' fp16 clamp and norm casts): keys
    # "plain@float16" / "plain@bfloat16", the model converted as a whole, as pipelines load it.
    plain = next(c for c in cases if c["name"] == "plain")
    for dtype in (torch.float16, torch.bfloat16):
        half = random_model(len(tok)).to(dtype)
        with torch.no_grad():
            z = half(input_ids=torch.tensor([plain["ids"]])).last_hidden_state
        hidden[f"plain@{str(dtype).removeprefix('torch.')}"] = z[0].float().contiguous()
    # ComfyUI's t5xxl_fp8_e4m3fn layout: the split file with every weight stored as fp8; its
    # reference is transformers on those fp8 values (exact in fp32).
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in state.items()}
    save_file(fp8, os.path.join(OUT, "t5xxl_fp8_e4m3fn.safetensors"))
    model_fp8 = random_model(len(tok))
    model_fp8.load_state_dict({k: v.float() for k, v in fp8.items()}, strict=False)
    with torch.no_grad():
        z = model_fp8(input_ids=torch.tensor([plain["ids"]])).last_hidden_state
    hidden["plain@fp8_e4m3fn"] = z[0].contiguous()
    save_file(hidden, os.path.join(OUT, "hidden.safetensors"))
    reference = {
        "source": "scripts/make_t5_reference.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "tokenizers": __import__("tokenizers").__version__,
        "single_file_prefix": SINGLE_FILE_PREFIX,
        "cases": cases,
        "spiece_cases": spiece_reference(),
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for root, _, files in sorted(os.walk(OUT)):
        for name in sorted(files):
            path = os.path.join(root, name)
            print(f"{os.path.relpath(path, OUT)}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
