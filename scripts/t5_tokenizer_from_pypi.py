#!/usr/bin/env python3
"""Writes the real T5 v1.1 tokenizer.json (google/t5-v1_1-xxl's: 32 000 SentencePiece pieces
+ 100 sentinels, the one SD3 ships as tokenizer_3/ and Flux as tokenizer_2/) from a package
on PyPI, for machines that reach no model hub.

    python3 scripts/t5_tokenizer_from_pypi.py OUT_DIR     # writes OUT_DIR/tokenizer.json

Where it comes from: the source distribution of `stable-diffusion-cpp-python` (MIT) vendors
stable-diffusion.cpp, whose src/tokenizers/vocab/clip_t5.hpp embeds that tokenizer.json as the
byte array `t5_tokenizer_json_str`. `pip download` fetches the sdist (about 20 MB, no build);
the array is decoded and checked (32 100 ids, `</s>` = 1, `<pad>` = 0).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "stable-diffusion-cpp-python==0.4.7"
MEMBER = "vendor/stable-diffusion.cpp/src/tokenizers/vocab/clip_t5.hpp"
ARRAY = "t5_tokenizer_json_str"


def download_sdist(folder: str) -> str:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--no-build-isolation",
         "--no-binary", "stable-diffusion-cpp-python", "-d", folder],
        check=True,
    )
    (name,) = [n for n in os.listdir(folder) if n.endswith(".tar.gz")]
    return os.path.join(folder, name)


def extract(sdist: str) -> bytes:
    with tarfile.open(sdist) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith(MEMBER)]
        source = tar.extractfile(member).read().decode()
    start = source.index("{", source.index(ARRAY)) + 1
    body = source[start : source.index("}", start)]
    return bytes(int(x, 16) for x in re.findall(r"0x[0-9a-fA-F]{2}", body))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: t5_tokenizer_from_pypi.py OUT_DIR")
    out = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        data = extract(download_sdist(tmp))
    spec = json.loads(data)
    vocab = spec["model"]["vocab"]
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert spec["model"]["type"] == "Unigram" and len(vocab) == 32100, len(vocab)
    assert added["</s>"] == 1 and added["<pad>"] == 0, added
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "wb") as f:
        f.write(data)
    print(f"{os.path.join(out, 'tokenizer.json')}: {len(data)} bytes, {len(vocab)} pieces")


if __name__ == "__main__":
    main()
