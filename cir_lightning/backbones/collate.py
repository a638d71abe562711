"""The model-side pre-processing that runs in DataLoader workers: prompts, tokenizer, image processor.

``MLLMCollator`` holds only the (picklable) processor and the templates, never the model, so worker
processes receive a small object. It fills the templates, appends the EOS block, tokenizes with left
padding and returns tensors the backbone consumes as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor

from cir_lightning.backbones.batches import Inputs, SampleBatches
from cir_lightning.backbones.gme_images import fit_to_factor
from cir_lightning.backbones.prompts import IMAGE, PromptTemplates
from cir_lightning.backbones.user_text import cut_to_tokens
from cir_lightning.checks import non_negative_int, positive_int
from cir_lightning.errors import CIRDataError, CIRModelError
from cir_lightning.pixels import to_rgb
from cir_lightning.placeholders import refuse_placeholders

# PaliGemma's processor adds token_type_ids and labels; the backbone runs plain causal attention
_DROP = ("token_type_ids", "labels")


def check_positions(lengths: Tensor, max_positions: int | None, max_text_tokens: int | None) -> None:
    """Refuse prompts longer than the language model's positions (``lengths``: real tokens per row).

    Example:
        >>> check_positions(torch.tensor([10, 900]), 1024, 512)
        >>> check_positions(torch.tensor([10, 1100]), 1024, 1000)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: a prompt of 1100 tokens is longer than the language model's 1024 positions (`max_position_embeddings`); with `max_text_tokens` = 1000 the user text alone may take 1000 tokens, and the template, image tokens and EOS block come on top: lower `max_text_tokens`
    """
    if max_positions is None or not len(lengths):
        return
    longest = int(lengths.max())
    if longest > max_positions:
        limit = f"`max_text_tokens` = {max_text_tokens}" if max_text_tokens is not None else \
            "`max_text_tokens` = null (no limit)"
        raise CIRDataError(f"a prompt of {longest} tokens is longer than the language model's {max_positions} "
                           f"positions (`max_position_embeddings`); with {limit} the user text alone may take "
                           f"{max_text_tokens or 'any number of'} tokens, and the template, image tokens and EOS "
                           "block come on top: lower `max_text_tokens`")


def as_rgb(images: Sequence[Any]) -> list[Any]:
    """PIL images as 8-bit RGB (``cir_lightning.pixels.to_rgb``); RGB images and other objects pass as they are."""
    return [to_rgb(im, f"image {i} of the batch") if isinstance(im, Image.Image) and im.mode != "RGB" else im
            for i, im in enumerate(images)]


class MLLMCollator(SampleBatches):
    """Turns images and texts into inputs of a multimodal LLM, and samples into batches.

    Args:
        processor: a Hugging Face processor with ``tokenizer`` and ``image_token`` (e.g. LlavaNextProcessor).
        prompts: the query / gallery / text templates.
        eos_token: the token repeated at the end of every prompt (default: the tokenizer's EOS).
        eos_block_size: how many EOS tokens to append (FiRE: 5).
        max_text_tokens: the most tokens of USER text in a prompt (the modification of a query, the
            caption of a text item), counted on the text alone; longer texts are cut at a token boundary
            (keeping the text's exact beginning, never the template, image tokens or EOS block), with a
            warning once. ``None``: no limit. Default 512 (FiRE's text ``max_length``).
        max_positions: the language model's ``max_position_embeddings``: a prompt longer than that is an
            error (naming ``max_text_tokens``), never a silent run past the positions; ``None``: unchecked.
    """

    def __init__(self, processor: Any, prompts: PromptTemplates, eos_token: str | None = None,
                 eos_block_size: int = 5, max_text_tokens: int | None = 512, max_positions: int | None = None) -> None:
        non_negative_int("eos_block_size", eos_block_size)
        positive_int("max_text_tokens", max_text_tokens, optional=True)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        self.prompts = prompts
        self.image_token = getattr(processor, "image_token", IMAGE)
        video = getattr(processor, "video_token", None)  # Qwen2-VL's: in a user's text, a video that is not there
        self.placeholders = list(dict.fromkeys([IMAGE, self.image_token, *([video] if video else [])]))
        self.eos_token = eos_token or self.tokenizer.eos_token
        if self.eos_token is None:
            raise CIRModelError("the tokenizer has no EOS token; set `eos_token` of the backbone")
        self.eos_id = self.tokenizer.convert_tokens_to_ids(self.eos_token)
        if self.eos_id is None or self.eos_id == self.tokenizer.unk_token_id:
            raise CIRModelError(f"`eos_token` {self.eos_token!r} is not a token of the tokenizer")
        self.eos_block_size = eos_block_size
        self.max_text_tokens = max_text_tokens
        self.max_positions = max_positions
        self._warned = False
        self.marker_id = None
        if prompts.marker is not None:
            self.marker_id = self.tokenizer.convert_tokens_to_ids(prompts.marker)
            if self.marker_id is None or self.marker_id == self.tokenizer.unk_token_id:
                raise CIRModelError(f"the prompts' marker {prompts.marker!r} is not a token of the tokenizer "
                                    "(LamRA checkpoints add `<emb>`); use a checkpoint that has it or another preset")

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def limit_texts(self, texts: Sequence[str], what: str = "text") -> list[str]:
        """The user's ``texts`` (``what``: modification, text) with every text longer than ``max_text_tokens``
        tokens cut to it (the others unchanged; warns once per collator with the count and the longest
        length); a text holding an image placeholder is an error (``cir_lightning.placeholders``)."""
        texts = list(texts)
        refuse_placeholders(texts, self.placeholders, what)
        if self.max_text_tokens is None or not texts:
            return texts
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=fast)
        cut, longest = 0, 0
        for i, ids in enumerate(encoded["input_ids"]):
            if len(ids) > self.max_text_tokens:
                offsets = [tuple(o) for o in encoded["offset_mapping"][i]] if fast else []
                texts[i] = cut_to_tokens(texts[i], offsets, self.max_text_tokens, self._count)
                cut, longest = cut + 1, max(longest, len(ids))
        if cut and not self._warned:
            self._warned = True
            rank_zero_warn(f"{cut} of {len(texts)} text(s) in a batch were longer than `max_text_tokens` = "
                           f"{self.max_text_tokens} tokens and were cut to it (the longest had {longest} tokens); "
                           "set `max_text_tokens` higher (or null for no limit) to keep more. Warned once.")
        return texts

    def _finish(self, texts: list[str]) -> list[str]:
        return [t.replace(IMAGE, self.image_token) + self.eos_token * self.eos_block_size for t in texts]

    def _check_block(self, inputs: Inputs) -> Inputs:
        check_positions(inputs["attention_mask"].sum(dim=1), self.max_positions, self.max_text_tokens)
        n = self.eos_block_size
        if n:
            tail = inputs["input_ids"][:, -n:]  # left padding: the last n columns are real tokens
            if not bool((tail == self.eos_id).all()):
                raise CIRModelError(
                    f"the tokenizer did not keep the appended {self.eos_token!r} x {n} block as {n} tokens "
                    f"(got {tail[0].tolist()}); choose another `eos_token` or `eos_block_size`")
        return {k: v for k, v in inputs.items() if k not in _DROP}

    def for_subset(self, name: str) -> MLLMCollator:
        """A copy with subset ``name``'s templates where ``prompts.per_subset`` names a preset for it."""
        templates = self.prompts.for_subset(name)
        if templates is self.prompts:
            return self
        subset = copy.copy(self)
        subset.prompts = templates
        return subset

    def query_inputs(self, images: Sequence[Image.Image], modifications: Sequence[str]) -> Inputs:
        """Inputs for reference images with modification texts."""
        texts = [self.prompts.query.format(modification=m) for m in self.limit_texts(modifications, "modification")]
        return self._check_block(self._process(images, self._finish(texts)))

    def gallery_inputs(self, images: Sequence[Image.Image]) -> Inputs:
        """Inputs for gallery (or target) images."""
        texts = [self.prompts.gallery] * len(images)
        return self._check_block(self._process(images, self._finish(texts)))

    def _process(self, images: Sequence[Image.Image], texts: list[str]) -> Any:
        """The processor on ``images`` and ``texts``, the images prepared as the prompts say (``resize_to``,
        ``pre_resize``, ``image_pixels``: BGE-VL-MLLM's resize, GME's ``fetch_image``, its token range), RGB."""
        images, options = list(images), {}
        if self.prompts.resize_to:  # BGE-VL-MLLM's data_process: resize in the image's own mode, then RGB
            images = [image.resize(tuple(self.prompts.resize_to)).convert("RGB") for image in images]
        if self.prompts.pre_resize:
            images = [fit_to_factor(image, self.prompts.pre_resize) for image in images]
        images = as_rgb(images)  # alpha dropped, as every original did (transformers 5 would composite it)
        if self.prompts.image_pixels:
            options["size"] = {"shortest_edge": self.prompts.image_pixels[0],
                               "longest_edge": self.prompts.image_pixels[1]}
        return self.processor(images=images, text=texts, padding=True, return_tensors="pt", **options)

    def text_inputs(self, texts: Sequence[str]) -> Inputs:
        """Inputs for text-only items (e.g. target captions)."""
        prompts = [self.prompts.text.format(text=t) + self.eos_token * self.eos_block_size
                   for t in self.limit_texts(texts)]
        return self._check_block(dict(self.tokenizer(prompts, padding=True, return_tensors="pt")))

    def caption_inputs(self, images: Sequence[Image.Image], prompts: Sequence[str], captions: Sequence[str],
                       max_caption_tokens: int | None = None) -> tuple[Inputs, Tensor]:
        """Inputs for generative training (FiRE stage 1) and their ``labels``.

        Each row is ``prompt`` (with its image) followed by the caption's tokens and the EOS token,
        left-padded; ``labels`` hold the caption and EOS ids at their positions and -100 everywhere else
        (prompt, image and padding), so only the caption is learned.
        """
        refuse_placeholders(captions, self.placeholders, "caption")
        encoded = self._process(images, [p.replace(IMAGE, self.image_token) for p in prompts])
        inputs = {k: v for k, v in encoded.items() if k not in _DROP}
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        tails = [self.tokenizer(c, add_special_tokens=False)["input_ids"][:max_caption_tokens] + [self.eos_id]
                 for c in captions]
        lengths = [int(m.sum()) + len(t) for m, t in zip(mask, tails, strict=True)]
        width, rows = max(lengths), len(tails)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        labels = torch.full((rows, width), -100, dtype=torch.long)
        # every per-token tensor (ids, mask, Qwen's mm_token_type_ids) is re-packed: real tokens, then the
        # caption (ids: its tokens; mask: 1; others: 0, "text"), left-padded to the new width
        per_token = {k: v for k, v in inputs.items() if isinstance(v, Tensor) and v.shape == ids.shape}
        for key, value in per_token.items():
            fill = pad if key == "input_ids" else 0
            out = torch.full((rows, width), fill, dtype=value.dtype)
            for i, tail in enumerate(tails):
                extra = torch.tensor(tail) if key == "input_ids" else torch.full((len(tail),), int(key == "attention_mask"))
                out[i, width - lengths[i]:] = torch.cat([value[i][mask[i]], extra.to(value.dtype)])
            inputs[key] = out
        for i, tail in enumerate(tails):
            labels[i, width - len(tail):] = torch.tensor(tail)
        return inputs, labels
