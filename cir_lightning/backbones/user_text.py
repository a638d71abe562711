"""The user's text in a prompt, cut to ``max_text_tokens`` at a token boundary (``MLLMCollator.limit_texts``;
texts holding an image placeholder are refused first, ``cir_lightning.placeholders``)."""

from __future__ import annotations

from collections.abc import Callable


def cut_to_tokens(text: str, offsets: list[tuple[int, int]], limit: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` ending at a token boundary with at most ``limit`` tokens.

    Args:
        offsets: a fast tokenizer's character spans of the text's tokens; empty for a slow tokenizer.
        count: the number of tokens of a string (without special tokens).
    """
    if not offsets:  # slow tokenizer: the longest character prefix within the limit, by bisection
        low, high = 0, len(text)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if count(text[:mid]) <= limit else (low, mid - 1)
        return text[:low]
    end = offsets[limit - 1][1]
    # a character split over two tokens (byte-level BPE) can make the prefix re-tokenize longer: back off
    while end > 0 and count(text[:end]) > limit:
        starts = [start for start, _ in offsets if start < end]
        end = max(starts) if starts else 0
    return text[:end]
