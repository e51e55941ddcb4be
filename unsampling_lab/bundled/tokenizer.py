"""A CLIP BPE tokenizer over the caption vocabulary: every caption word is one token.

CLIP's BPE splits a word into byte-level characters with "</w>" on the last one ("red" -> r, e, d</w>)
and merges pairs in rank order. We keep CLIP's 256 byte symbols (so any text tokenizes) and add, word
by word, the merges that join the word's current pieces left to right until it is a single token.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one lower-case word: merge the lowest-ranked adjacent pair until none applies."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def build_vocab(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) such that every word in `words` BPE-encodes to exactly one token."""
    base = list(bytes_to_unicode().values())
    merges: list[tuple[str, str]] = []
    for _ in range(len(words) * 16):
        ranks = {m: i for i, m in enumerate(merges)}
        pending = [w for w in words if len(_bpe(w, ranks)) > 1]
        if not pending:
            break
        parts = _bpe(pending[0], ranks)
        merges.append((parts[0], parts[1]))
    else:
        raise RuntimeError(f"could not build single-token merges for {list(words)}")
    vocab_list = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    return vocab, merges


def write_tokenizer(folder: Path, words: Sequence[str], *, model_max_length: int = 8) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs of a CLIPTokenizer to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "bos_token": BOS,
              "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True,
              "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
