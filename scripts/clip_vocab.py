"""Build Hugging Face CLIP tokenizer files (vocab.json / merges.txt) offline.

The only input is OpenAI's BPE merge list ``bpe_simple_vocab_16e6.txt`` (a copy
ships inside the Rust crate ``instant-clip-tokenizer``).  The vocabulary is laid
out exactly as OpenAI CLIP's ``simple_tokenizer`` lays it out:

  ids     0..255   the 256 byte-level symbols (bytes -> printable unicode)
  ids   256..511   the same symbols with the end-of-word marker '</w>'
  ids   512..49405 one entry per BPE merge (the two halves concatenated)
  id        49406  <|startoftext|>
  id        49407  <|endoftext|>
"""

from __future__ import annotations

import glob
import json
import os

VOCAB_SIZE = 49408
# OpenAI keeps the first 49152 - 256 - 2 merges (after the "#version" header line).
NUM_MERGES = 49152 - 256 - 2
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def byte_symbols() -> list[str]:
    """The printable unicode character standing for each byte value 0..255, in
    OpenAI/GPT-2 order: the bytes that are already printable (and not space)
    map to themselves and come first; every other byte is given a code point
    from 256 upwards, in increasing byte order, and is appended after them."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    table = {b: chr(b) for b in printable}
    next_cp = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(next_cp)
            next_cp += 1
    order = printable + [b for b in range(256) if b not in printable]
    return [table[b] for b in order]


def find_bpe_file(explicit: str | None = None) -> str:
    if explicit:
        if not os.path.isfile(explicit):
            raise FileNotFoundError(f"--bpe {explicit}: no such file")
        return explicit
    pattern = os.path.expanduser(
        "~/.cargo/registry/src/*/instant-clip-tokenizer-*/bpe_simple_vocab_16e6.txt"
    )
    hits = sorted(glob.glob(pattern))
    if not hits:
        raise FileNotFoundError(
            "bpe_simple_vocab_16e6.txt not found (looked for " + pattern + "); pass --bpe PATH"
        )
    return hits[-1]


def load_merges(bpe_path: str) -> list[tuple[str, str]]:
    with open(bpe_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path}: unexpected merge list layout")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(tokens) != VOCAB_SIZE or len(vocab) != VOCAB_SIZE:
        raise ValueError(f"vocab has {len(tokens)} tokens / {len(vocab)} unique, expected {VOCAB_SIZE}")
    return vocab


def write_tokenizer_dir(out_dir: str, bpe_path: str, model_max_length: int = 77) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    (the file set of the SD 1.x diffusers repos), padding with <|endoftext|>."""
    merges = load_merges(bpe_path)
    vocab = build_vocab(merges)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.write("\n".join(f"{a} {b}" for a, b in merges))
        f.write("\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2, sort_keys=True)
        f.write("\n")
