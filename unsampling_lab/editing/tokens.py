"""Words -> token positions, and refine's token alignment (prompt-to-prompt's seq_aligner, rewritten).

Token positions index the text encoder's sequence: 0 is the start token, the words follow, then the end
token and padding. Refine aligns the word tokens of the two prompts globally (Needleman-Wunsch, score
+1 match, -1 mismatch, 0 gap, as P2P's ScoreParams(0, 1, -1)); a target token aligned to a source token
reads that token's attention, a target token aligned to a gap is new. The start token maps to itself;
the end token and padding map to the source's end token and padding, position for position.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import UnsamplingError


def word_tokens(tokenizer: Any, prompt: str) -> list[list[int]]:
    """For each space-separated word of `prompt`, the positions of its tokens in the encoded sequence."""
    out: list[list[int]] = []
    pos = 1
    for word in prompt.split():
        n = len(tokenizer(word).input_ids) - 2  # without start and end tokens
        out.append(list(range(pos, pos + n)))
        pos += n
    total = len(tokenizer(prompt).input_ids) - 2
    if pos - 1 != total:
        raise UnsamplingError(f"prompt {prompt!r}: its words tokenize to {pos - 1} tokens alone but {total} together; "
                              "use plain space-separated words")
    return out


def word_positions(tokenizer: Any, prompt: str, words: Sequence[str]) -> list[int]:
    """Token positions of every occurrence of `words` in `prompt` (lower-case match); [] if none occurs."""
    want = {w.lower() for w in words}
    return [p for w, ps in zip(prompt.split(), word_tokens(tokenizer, prompt)) if w.lower().strip(".,") in want for p in ps]


def global_alignment(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """For each target element, the index of the source element it is aligned to, or -1 (a gap)."""
    n, m = len(source), len(target)
    score = [[0] * (m + 1) for _ in range(n + 1)]  # gap 0: the first row and column stay 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = score[i - 1][j - 1] + (1 if source[i - 1] == target[j - 1] else -1)
            score[i][j] = max(diag, score[i - 1][j], score[i][j - 1])
    out = [-1] * m
    i, j = n, m
    while i > 0 and j > 0:  # trace back, preferring the diagonal
        if score[i][j] == score[i - 1][j - 1] + (1 if source[i - 1] == target[j - 1] else -1):
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif score[i][j] == score[i - 1][j]:
            i -= 1
        else:
            j -= 1
    return out


def refine_mapper(tokenizer: Any, source: str, target: str, length: int) -> tuple[Tensor, Tensor]:
    """(mapper [length] long, alpha [length] float): target token j reads source token mapper[j] where
    alpha[j] = 1; alpha[j] = 0 for new tokens (their mapper entry is 0 and unused)."""
    src = tokenizer(source).input_ids[1:-1]
    tgt = tokenizer(target).input_ids[1:-1]
    if len(tgt) + 2 > length or len(src) + 2 > length:
        raise UnsamplingError(f"refine: the prompts need {max(len(src), len(tgt)) + 2} tokens, the encoder keeps {length}")
    aligned = global_alignment(src, tgt)
    mapper = torch.zeros(length, dtype=torch.long)
    alpha = torch.ones(length)
    for j, a in enumerate(aligned):
        if a < 0:
            alpha[j + 1] = 0.0
        else:
            mapper[j + 1] = a + 1
    shift = len(src) - len(tgt)  # end token and padding: position for position after the words
    for j in range(len(tgt) + 1, length):
        mapper[j] = min(max(j + shift, 0), length - 1)
    return mapper, alpha


def token_strings(tokenizer: Any, prompt: str, length: int) -> list[str]:
    """The token at each position as text (start, words' pieces, end, padding), for plots."""
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
    return [tokenizer.decode([i]).strip() or "<pad>" for i in ids][:length]
