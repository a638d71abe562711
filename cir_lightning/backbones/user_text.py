"""The user's text in a prompt (a query's modification, a text item's caption, a stage-1 caption): refused
where it holds a placeholder the model fills with an image (or a video), cut to ``max_text_tokens`` at a
token boundary.

A modification or caption that holds ``<image>`` (or the processor's own image or video token) would be read
by the model as an image that is not there: the image count of the batch no longer matches (a library error far
from the data), or a text-only item silently embeds the image token's vector. It is refused with the text.

Example:
    >>> refuse_placeholders(["make it red", "a <image> dress"], ["<image>"], "caption")
    Traceback (most recent call last):
    ...
    cir_lightning.errors.CIRDataError: the caption 'a <image> dress' holds '<image>', a placeholder the model fills with an image: it would read one that is not there; remove it from the data
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from cir_lightning.errors import CIRDataError


def refuse_placeholders(texts: Iterable[str], placeholders: Sequence[str], what: str) -> None:
    """Raise ``CIRDataError`` naming the first of ``texts`` that holds one of ``placeholders``."""
    for text in texts:
        for token in placeholders:
            if token in text:
                kind = "a video" if "video" in token else "an image"
                raise CIRDataError(f"the {what} {text!r} holds {token!r}, a placeholder the model fills with {kind}: "
                                   "it would read one that is not there; remove it from the data")


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
