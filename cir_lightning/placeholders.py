"""The user's texts (a query's modification, a caption) may not hold a placeholder the model fills with an
image (or a video): ``<image>``, or the processor's own image or video token.

Such a text would be read by the model as an image that is not there: the image count of the batch no
longer matches (a library error far from the data), or a text-only item silently embeds the image token's
vector. The DataModule refuses it when the model connects, naming the annotation line, before any batch
is made (``cir_lightning.data.datasets.refuse_placeholder_texts``); the collators refuse it in texts
given directly (``encode_query``, ``search``, ``serve``).

Example:
    >>> refuse_placeholders(["make it red", "a <image> dress"], ["<image>"], "caption")
    Traceback (most recent call last):
    ...
    cir_lightning.errors.CIRDataError: the caption 'a <image> dress' holds '<image>', a placeholder the model fills with an image: it would read one that is not there; remove it from the data
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cir_lightning.errors import CIRDataError

__all__ = ["refuse_placeholders"]


def refuse_placeholders(texts: Iterable[str], placeholders: Sequence[str], what: str,
                        where: str | None = None) -> None:
    """Raise ``CIRDataError`` naming the first of ``texts`` that holds one of ``placeholders`` (``what``: the
    texts' kind, e.g. "modification"; ``where``: the file and line they come from)."""
    for text in texts:
        for token in placeholders:
            if token in text:
                kind = "a video" if "video" in token else "an image"
                raise CIRDataError(f"the {what} {text!r} holds {token!r}, a placeholder the model fills with {kind}: "
                                   "it would read one that is not there; remove it from the data", where)
