"""Samples -> batches: ``SampleBatches``, the base of every backbone's collator.

A backbone's collator turns the raw samples of a cir_lightning DataModule (dicts of PIL images, texts and
``"index"``) into the batches its ``forward`` and ``embed_batch`` read. ``SampleBatches`` does the batching
(which keys a batch has, several texts of one query, which training targets are the same image); a
subclass supplies only the model inputs of images and texts (``query_inputs``, ``gallery_inputs``,
``text_inputs``), which the backbone's ``encode_*`` call too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from cir_lightning.errors import CIRModelError
from cir_lightning.targets import target_identity

Inputs = dict[str, Tensor]


def sample_index(samples: list[dict[str, Any]]) -> Tensor:
    """The samples' dataset rows, as every batch carries them (``batch["index"]``)."""
    return torch.tensor([s["index"] for s in samples], dtype=torch.long)


class SampleBatches:
    """Samples -> batches, shared by every collator: ``triplets`` (training), ``queries`` and ``gallery``
    (evaluation), see ``cir_lightning.data.contract.Collator``. A subclass supplies ``query_inputs``,
    ``gallery_inputs`` and ``text_inputs``: the model inputs (a dict of tensors, what the backbone's
    ``forward`` takes) of images with texts, of images alone and of texts alone. It must be picklable (it
    runs in DataLoader workers): hold the processor or tokenizer, never the model.

    Example:
        >>> from cir_lightning.backbones import SampleBatches
        >>> from PIL import Image
        >>> import torch
        >>> class Sizes(SampleBatches):  # a toy: an image's width, a text's length
        ...     def query_inputs(self, images, modifications):
        ...         return {"x": torch.tensor([[im.width, len(t)] for im, t in zip(images, modifications)])}
        ...     def gallery_inputs(self, images):
        ...         return {"x": torch.tensor([[im.width, 0] for im in images])}
        >>> batch = Sizes().queries([{"index": 7, "reference_image": Image.new("RGB", (4, 4)), "modification": "red"}])
        >>> batch["index"].tolist(), batch["query"]["x"].tolist()
        ([7], [[4, 3]])
        >>> Sizes().text_inputs(["a caption"])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRModelError: Sizes does not implement `text_inputs(texts)` (the model inputs of texts...
    """

    placeholders: Sequence[str] = ()
    """What the user's texts may not hold (``cir_lightning.placeholders``): the model's image tokens."""

    def query_inputs(self, images: Sequence[Image.Image], modifications: Sequence[str]) -> Inputs:
        """The model inputs of reference images with their modification texts (queries)."""
        raise _lacks(self, "query_inputs(images, modifications)", "reference images with their texts")

    def gallery_inputs(self, images: Sequence[Image.Image]) -> Inputs:
        """The model inputs of gallery images (and of training targets)."""
        raise _lacks(self, "gallery_inputs(images)", "gallery images")

    def text_inputs(self, texts: Sequence[str]) -> Inputs:
        """The model inputs of texts alone (target captions: ``target_side: caption``, ``encode_text``)."""
        raise _lacks(self, "text_inputs(texts)", "texts, which training on target captions and `encode_text` embed")

    def triplets(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Training batch: queries, targets, ``target_group`` / ``target_id`` (see ``target_identity``)
        and ``target_text`` when every sample has a ``target_caption``."""
        batch = {
            "index": sample_index(samples),
            "query": self.query_inputs([s["reference_image"] for s in samples],
                                       [s["modification"] for s in samples]),
            "target": self.gallery_inputs([s["target_image"] for s in samples]),
        }
        batch.update(target_identity(samples))
        captions = [s.get("target_caption") for s in samples]
        if all(c is not None for c in captions):
            batch["target_text"] = self.text_inputs(captions)
        return batch

    def queries(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Query batch; a sample whose ``modification`` is a list of texts becomes one row per text and
        ``query_groups`` maps each row to its sample (the model averages them)."""
        images, texts, groups = [], [], []
        for i, s in enumerate(samples):
            mods = [s["modification"]] if isinstance(s["modification"], str) else list(s["modification"])
            images += [s["reference_image"]] * len(mods)
            texts += mods
            groups += [i] * len(mods)
        batch = {"index": sample_index(samples), "query": self.query_inputs(images, texts)}
        if len(texts) != len(samples):
            batch["query_groups"] = torch.tensor(groups, dtype=torch.long)
        return batch

    def gallery(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Gallery batch: ``index`` and the images' inputs."""
        return {"index": sample_index(samples), "gallery": self.gallery_inputs([s["image"] for s in samples])}

    def for_subset(self, name: str) -> SampleBatches:
        """The collator for evaluation subset ``name``: this one, unless its prompts differ per subset."""
        return self


def _lacks(collator: SampleBatches, method: str, what: str) -> CIRModelError:
    return CIRModelError(f"{type(collator).__name__} does not implement `{method}` (the model inputs of {what}): "
                         "a SampleBatches subclass supplies it")
