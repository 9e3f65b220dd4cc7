"""Offline CLIP tokenizers built from a word list.

No tokenizer can be downloaded here, so the miniature world and the tests build a real
``CLIPTokenizer`` (byte-pair encoding, the same class SD, SDXL, SD3 and Flux load) whose
vocabulary is every printable ASCII character plus merges that spell each given word as
one token. Unknown words still tokenize, character by character.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _merges_for(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that turn the characters of ``word`` into the single token ``word</w>``."""
    symbols = [*word[:-1], word[-1] + "</w>"]
    merges = []
    current = symbols[0]
    for symbol in symbols[1:]:
        merges.append((current, symbol))
        current += symbol
    return merges


def write_clip_tokenizer(words: Iterable[str], folder: str | Path, model_max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer config for ``words`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = [c for c in string.printable if c.strip()]
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: dict[tuple[str, str], None] = {}  # ordered and with constant-time membership
    for word in sorted({w.lower() for w in words if len(w) > 1}):
        for pair in _merges_for(word):
            if pair not in merges:
                merges[pair] = None
                vocab.setdefault(pair[0] + pair[1], len(vocab))
    for token in SPECIAL_TOKENS:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "unk_token": SPECIAL_TOKENS[1],
        "pad_token": SPECIAL_TOKENS[1],
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def build_clip_tokenizer(
    words: Iterable[str], folder: str | Path, model_max_length: int = 77
) -> CLIPTokenizer:
    """Write a tokenizer for ``words`` into ``folder`` and load it with ``CLIPTokenizer.from_pretrained``."""
    return CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(words, folder, model_max_length)))
