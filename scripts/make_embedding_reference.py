#!/usr/bin/env python3
"""Make tiny textual-inversion embeddings for the committed tiny SD 1.x and SDXL models and
record the text conditioning of prompts that use them, through diffusers' own
`load_textual_inversion`.

    python3 scripts/make_embedding_reference.py [--data tests/data]

Writes tests/data/embeddings/:
  sd1/tinyneg.safetensors     SD 1.x, one tensor `emb_params` [3, 32] (kohya / A1111 layout)
  sd1/tinystyle.pt            SD 1.x, A1111's torch.save layout (`string_to_param` {"*": [2, 32]},
                              name, step, sd_checkpoint, sd_checkpoint_name); the tests convert it
                              with `hiresfix convert` (diffusers reads the .pt itself)
  sd1/tinylong.safetensors    SD 1.x, [9, 32]: the long prompt puts it across a chunk boundary
  sdxl/tinyxl.safetensors     SDXL, `clip_l` [2, 16] + `clip_g` [2, 16]
  sdxl/tinyxllong.safetensors SDXL, `clip_l` [7, 16] + `clip_g` [7, 16], across a chunk boundary
  sd2/tinyh.safetensors       SD 2.x (OpenCLIP-H layout), one tensor `emb_params` [3, 16]
  bad/two-terms.pt            an A1111 .pt whose `string_to_param` holds two terms (A1111 refuses
                              it; so does `hiresfix convert`, in the bad-input corpus)
  reference.safetensors       conditioning of each prompt (CPU fp32), see reference.json
  reference.json              prompts, chunk layouts, what each tensor is

How the reference is made: each embedding is loaded into the diffusers pipeline with
`load_textual_inversion` (SDXL: `clip_l` into text_encoder/tokenizer, `clip_g` into
text_encoder_2/tokenizer_2, as diffusers documents), which adds one token per vector and writes
the vectors into the token-embedding table.  diffusers itself truncates prompts at 77 tokens
and has no weighting syntax, so the A1111 part is applied here by hand: the prompt is parsed
(A1111 `parse_prompt_attention`) and cut into 75-token chunks as A1111's
`sd_hijack_clip.tokenize_line` does with its embedding database (the name's BPE tokens match,
its vectors take as many positions with the fragment's weight, and an embedding that would
cross a chunk's end starts the next chunk); the positions hold the tokens diffusers added, so
the vectors come from diffusers' table.  Each chunk runs through the diffusers text encoder
(SD 1.x: last_hidden_state; SDXL: hidden_states[-2] of both, text_embeds of bigG for the pooled
vector, from the first chunk), then A1111's "Original" emphasis per chunk (mean restored).

Everything runs on CPU in float32, offline, and is deterministic (reruns give byte-identical
files).  Needs torch, diffusers, transformers, open_clip (through make_family_reference),
safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_family_reference as fam  # noqa: E402  (sets the offline environment first)
from make_family_reference import BOS, CHUNK_LEN, COMMA, COMMA_BACKTRACK, EOS, OPEN_CLIP_PAD  # noqa: E402

import torch  # noqa: E402
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

SEED = 2024
SCALE = 0.5  # spread of the random vectors (the tiny token tables are ~N(0, 0.5) after fp16 rounding)

SD1_EMBEDDINGS = {"tinyneg": 3, "tinystyle": 2, "tinylong": 9}
SDXL_EMBEDDINGS = {"tinyxl": 2, "tinyxllong": 7}
SD2_EMBEDDINGS = {"tinyh": 3}
SD1_WIDTH, SD2_WIDTH, SDXL_WIDTHS = 32, 16, {"clip_l": 16, "clip_g": 16}

# 68 one-token words, no comma (A1111's comma backtracking stays out of the long prompts).
FILLER = " ".join(["red green blue small big old new warm cold dark light soft hard"] * 5 + ["tree sky moon"])
PROMPTS = {
    "sd1": {
        "short": "a photo of (tinyneg:1.2) cat, [tinystyle] in a garden",
        "long": FILLER + " (tinylong:1.1) at the end, tinyneg",
    },
    "sd2": {
        "short": "a (tinyh:1.3) dog, [tinyh] again",
    },
    "sdxl": {
        "short": "a (tinyxl:0.8) cat",
        "long": FILLER + " sky (tinyxllong:1.3) end",
    },
}


def vectors(n: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """fp16-representable float32 values, so any stored precision reads them exactly."""
    return (torch.randn(n, width, generator=gen) * SCALE).half().float()


def write_embeddings(out: str) -> dict:
    gen = torch.Generator().manual_seed(SEED)
    made = {}
    os.makedirs(os.path.join(out, "sd1"), exist_ok=True)
    os.makedirs(os.path.join(out, "sdxl"), exist_ok=True)
    for name, n in SD1_EMBEDDINGS.items():
        v = vectors(n, SD1_WIDTH, gen)
        made[name] = {"": v}
        if name == "tinystyle":
            torch.save(
                {
                    "string_to_token": {"*": 265},
                    "string_to_param": {"*": v},
                    "name": name,
                    "step": 150,
                    "sd_checkpoint": "7a1b2c3d",
                    "sd_checkpoint_name": "sd1-tiny",
                },
                os.path.join(out, "sd1", f"{name}.pt"),
            )
        else:
            save_file({"emb_params": v}, os.path.join(out, "sd1", f"{name}.safetensors"))
    for name, n in SDXL_EMBEDDINGS.items():
        parts = {key: vectors(n, w, gen) for key, w in SDXL_WIDTHS.items()}
        made[name] = parts
        save_file(parts, os.path.join(out, "sdxl", f"{name}.safetensors"))
    os.makedirs(os.path.join(out, "bad"), exist_ok=True)
    two = {"*": vectors(1, SD1_WIDTH, gen), "**": vectors(1, SD1_WIDTH, gen)}
    torch.save({"string_to_token": {"*": 265, "**": 266}, "string_to_param": two, "name": "two-terms"}, os.path.join(out, "bad", "two-terms.pt"))
    os.makedirs(os.path.join(out, "sd2"), exist_ok=True)
    for name, n in SD2_EMBEDDINGS.items():
        v = vectors(n, SD2_WIDTH, gen)
        made[name] = {"": v}
        save_file({"emb_params": v}, os.path.join(out, "sd2", f"{name}.safetensors"))
    return made


def embedding_path(out: str, family: str, name: str) -> str:
    ext = "pt" if name == "tinystyle" else "safetensors"
    return os.path.join(out, family, f"{name}.{ext}")


def a1111_chunks(tok: CLIPTokenizer, text: str, db: dict):
    """A1111 tokenize_line with an embedding database: db = {name: vectors}.  Returns chunks as
    (tokens[77] with 0 at placeholders, weights[77], fixes [(offset, name)], prompt tokens)."""
    parsed = fam.parse_prompt_attention(text)
    names = {name: tok(name, add_special_tokens=False)["input_ids"] for name in db}
    by_first: dict[int, list] = {}
    for name, ids in names.items():
        by_first.setdefault(ids[0], []).append((ids, name))
    for lst in by_first.values():
        lst.sort(key=lambda x: len(x[0]), reverse=True)
    chunks = []
    cur_t, cur_w, cur_f = [], [], []
    last_comma = -1

    def close():
        nonlocal cur_t, cur_w, cur_f, last_comma
        n = len(cur_t)
        pad = CHUNK_LEN - n
        chunks.append(([BOS] + cur_t + [EOS] * (pad + 1), [1.0] + cur_w + [1.0] * (pad + 1), cur_f, n))
        cur_t, cur_w, cur_f, last_comma = [], [], [], -1

    for frag, weight in parsed:
        if frag == "BREAK" and weight == -1:
            close()
            continue
        tokens = tok(frag, add_special_tokens=False)["input_ids"]
        pos = 0
        while pos < len(tokens):
            token = tokens[pos]
            if token == COMMA:
                last_comma = len(cur_t)
            elif COMMA_BACKTRACK and len(cur_t) == CHUNK_LEN and last_comma != -1 and len(cur_t) - last_comma <= COMMA_BACKTRACK:
                raise AssertionError("the reference prompts keep clear of comma backtracking")
            if len(cur_t) == CHUNK_LEN:
                close()
            match = next((m for m in by_first.get(token, []) if tokens[pos : pos + len(m[0])] == m[0]), None)
            if match is None:
                cur_t.append(token)
                cur_w.append(weight)
                pos += 1
                continue
            ids, name = match
            n = db[name]
            if len(cur_t) + n > CHUNK_LEN:
                close()
            cur_f.append((len(cur_t), name))
            cur_t += [0] * n
            cur_w += [weight] * n
            pos += len(ids)
    if cur_t or not chunks:
        close()
    return chunks


def chunk_ids(chunks, added: dict, pad: int) -> torch.Tensor:
    """The chunks' tokens with each embedding's placeholders as the tokens diffusers added for
    it; for OpenCLIP encoders everything after the first EOS becomes `pad` (A1111)."""
    rows = []
    for tokens, _, fixes, _ in chunks:
        ids = list(tokens)
        for offset, name in fixes:
            for i, t in enumerate(added[name]):
                ids[1 + offset + i] = t
        if pad != EOS:
            first = ids.index(EOS)
            ids[first + 1 :] = [pad] * (len(ids) - first - 1)
        rows.append(ids)
    return torch.tensor(rows, dtype=torch.int64)


def added_tokens(tokenizer, name: str, n: int) -> list[int]:
    """The tokens diffusers' load_textual_inversion adds for a multi-vector embedding."""
    names = [name] + [f"{name}_{i}" for i in range(1, n)]
    ids = tokenizer.convert_tokens_to_ids(names)
    assert all(i >= 49408 for i in ids), (name, ids)
    return ids


def describe_chunks(chunks) -> list[dict]:
    return [{"prompt_tokens": n, "embeddings": [{"offset": o, "name": nm} for o, nm in f]} for _, _, f, n in chunks]


@torch.no_grad()
def sd1_reference(data: str, out: str, made: dict, rec: dict, notes: dict) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(data, "sd1-tiny", "diffusers"), torch_dtype=torch.float32, safety_checker=None)
    plain = CLIPTokenizer.from_pretrained(os.path.join(data, "sd1-tiny", "diffusers", "tokenizer"))
    for name in SD1_EMBEDDINGS:
        pipe.load_textual_inversion(embedding_path(out, "sd1", name), token=name)
    table = pipe.text_encoder.get_input_embeddings().weight
    added = {n: added_tokens(pipe.tokenizer, n, k) for n, k in SD1_EMBEDDINGS.items()}
    for name in SD1_EMBEDDINGS:
        assert torch.equal(table[added[name]], made[name][""]), name
    rec["sd1.tinystyle.vectors"] = made["tinystyle"][""]
    for key, text in PROMPTS["sd1"].items():
        chunks = a1111_chunks(plain, text, SD1_EMBEDDINGS)
        ids = chunk_ids(chunks, added, EOS)
        w = fam.chunk_weights([(t, w, n) for t, w, _, n in chunks])

        def encode(i):
            return pipe.text_encoder(input_ids=i).last_hidden_state, None

        z, _ = fam.a1111_encode(ids, w, encode)
        rec[f"sd1.{key}.context"] = z
        rec[f"sd1.{key}.tokens"] = torch.tensor([c[0] for c in chunks], dtype=torch.int64)
        notes[f"sd1.{key}"] = {"prompt": text, "chunks": describe_chunks(chunks)}


@torch.no_grad()
def sd2_reference(data: str, out: str, made: dict, rec: dict, notes: dict) -> None:
    """SD 2.x: OpenCLIP-H (the diffusers encoder's last_hidden_state), padded with 0 after EOS."""
    folder = os.path.join(data, "sd2-tiny", "diffusers")
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    plain = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    for name in SD2_EMBEDDINGS:
        pipe.load_textual_inversion(embedding_path(out, "sd2", name), token=name)
    added = {n: added_tokens(pipe.tokenizer, n, k) for n, k in SD2_EMBEDDINGS.items()}
    for key, text in PROMPTS["sd2"].items():
        chunks = a1111_chunks(plain, text, SD2_EMBEDDINGS)
        w = fam.chunk_weights([(t, w, n) for t, w, _, n in chunks])

        def encode(i):
            return pipe.text_encoder(input_ids=i).last_hidden_state, None

        z, _ = fam.a1111_encode(chunk_ids(chunks, added, OPEN_CLIP_PAD), w, encode)
        rec[f"sd2.{key}.context"] = z
        notes[f"sd2.{key}"] = {"prompt": text, "chunks": describe_chunks(chunks)}


@torch.no_grad()
def sdxl_reference(data: str, out: str, made: dict, rec: dict, notes: dict) -> None:
    folder = os.path.join(data, "sdxl-tiny", "diffusers")
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    plain = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    for name in SDXL_EMBEDDINGS:
        state = load_file(embedding_path(out, "sdxl", name))
        pipe.load_textual_inversion(state["clip_g"], token=name, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
        pipe.load_textual_inversion(state["clip_l"], token=name, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    added_l = {n: added_tokens(pipe.tokenizer, n, k) for n, k in SDXL_EMBEDDINGS.items()}
    added_g = {n: added_tokens(pipe.tokenizer_2, n, k) for n, k in SDXL_EMBEDDINGS.items()}
    assert pipe.text_encoder_2.config.eos_token_id == EOS  # pooled at the first EOS, not argmax
    for key, text in PROMPTS["sdxl"].items():
        chunks = a1111_chunks(plain, text, SDXL_EMBEDDINGS)
        w = fam.chunk_weights([(t, w, n) for t, w, _, n in chunks])

        def encode_l(i):
            return pipe.text_encoder(input_ids=i, output_hidden_states=True).hidden_states[-2], None

        def encode_g(i):
            o = pipe.text_encoder_2(input_ids=i, output_hidden_states=True)
            return o.hidden_states[-2], o.text_embeds

        z_l, _ = fam.a1111_encode(chunk_ids(chunks, added_l, EOS), w, encode_l)
        z_g, pooled = fam.a1111_encode(chunk_ids(chunks, added_g, OPEN_CLIP_PAD), w, encode_g)
        rec[f"sdxl.{key}.context"] = torch.cat([z_l, z_g], dim=2)
        rec[f"sdxl.{key}.pooled"] = pooled
        notes[f"sdxl.{key}"] = {"prompt": text, "chunks": describe_chunks(chunks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="tests/data")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = os.path.join(args.data, "embeddings")
    made = write_embeddings(out)
    rec: dict = {}
    notes: dict = {}
    sd1_reference(args.data, out, made, rec, notes)
    sd2_reference(args.data, out, made, rec, notes)
    sdxl_reference(args.data, out, made, rec, notes)
    for key in ("sd1.long", "sdxl.long"):
        chunks = notes[key]["chunks"]
        assert len(chunks) == 2 and chunks[1]["embeddings"][0]["offset"] == 0 and chunks[0]["prompt_tokens"] < CHUNK_LEN, (key, chunks)
    rec = {k: v.contiguous() for k, v in sorted(rec.items())}
    save_file(rec, os.path.join(out, "reference.safetensors"))
    doc = {
        "script": "scripts/make_embedding_reference.py",
        "versions": fam.versions(),
        "weighting": "A1111 'Original' emphasis applied by hand per chunk (z * w, then the chunk's mean restored); diffusers has no weighting syntax",
        "chunking": "A1111 sd_hijack_clip.tokenize_line with the embedding database, transcribed; an embedding that would cross a 75-token chunk's end starts the next chunk",
        "prompts": notes,
        "tensors": {k: list(v.shape) for k, v in rec.items()},
        "tinystyle.pt": "A1111 torch.save layout; sd1.tinystyle.vectors is its string_to_param['*']",
    }
    with open(os.path.join(out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
