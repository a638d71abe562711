"""FiRE's public release (iLearn-Lab/SIGIR25-FIRE) embedding function, reproduced for ``release_compatible``.

What the release does, and what ``XGenMMBackbone(release_compatible=True)`` does the same way:

- images: ``Image.open(p).convert("RGB")`` first, then the short edge shrunk to at most 380 pixels (LANCZOS,
  ``int(side * scale)``), then anyres pre-processing (``load_preprocessed_image``);
- prompts: the template followed by ``" <|end|>"`` five times, spaces included (its ``DEFAULT_CONFIG``),
  the modification / caption ``.strip()``-ed, an empty caption read as ``"the target image"``;
- the spliced batch left-padded to the release's length (token padding length plus the largest number of
  image tokens added to a row), positions ``0 .. L-1`` over the padded row (no position ids: padding shifts
  them), the decoder with eager attention (transformers 4.44's Phi-3 has no other; padded rows enter the
  mean of short texts), and the embedding = the mean of the last 10 positions, L2-normalised.

``ReleaseCollator`` does the pre-processing; ``release_splice`` and ``RELEASE_LAST_N`` the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor

from cir_lightning.backbones.collate import Inputs, MLLMCollator, check_positions
from cir_lightning.backbones.prompts import IMAGE
from cir_lightning.pixels import shrink_short_edge

RELEASE_LAST_N = 10  # the release's hard-coded pooling: the last 10 positions of the padded sequence
RELEASE_MAX_SHORT_EDGE = 380


def release_image(image: Image.Image, max_short_edge: int = RELEASE_MAX_SHORT_EDGE) -> Image.Image:
    """The release's ``load_preprocessed_image`` before the processor: RGB, short edge at most 380.

    Example:
        >>> release_image(Image.new("P", (800, 400))).size, release_image(Image.new("P", (30, 20))).mode
        ((760, 380), 'RGB')
    """
    return shrink_short_edge(image.convert("RGB"), max_short_edge)


class ReleaseCollator(MLLMCollator):
    """``MLLMCollator`` with the release's images, texts and EOS block (``" <|end|>"`` x 5)."""

    def _block(self) -> str:
        return f" {self.eos_token}" * self.eos_block_size

    def _finish(self, texts: list[str]) -> list[str]:
        return [t.replace(IMAGE, self.image_token) + self._block() for t in texts]

    def _check_block(self, inputs: Inputs) -> Inputs:
        # the block holds spaces, so its token count is the tokenizer's business (the release checks nothing)
        check_positions(inputs["attention_mask"].sum(dim=1), self.max_positions, self.max_text_tokens)
        return {k: v for k, v in inputs.items() if k not in ("token_type_ids", "labels")}

    def query_inputs(self, images: Sequence[Image.Image], modifications: Sequence[str]) -> Inputs:
        return super().query_inputs([release_image(i) for i in images], [m.strip() for m in modifications])

    def gallery_inputs(self, images: Sequence[Image.Image]) -> Inputs:
        return super().gallery_inputs([release_image(i) for i in images])

    def text_inputs(self, texts: Sequence[str]) -> Inputs:
        texts = [t.strip() or "the target image" for t in texts]
        prompts = [self.prompts.text.format(text=t) + self._block() for t in self.limit_texts(texts)]
        return self._check_block(dict(self.tokenizer(prompts, padding=True, return_tensors="pt")))


def release_splice(embed_tokens: Callable[[Tensor], Tensor], input_ids: Tensor, attention_mask: Tensor,
                   image_tokens: list[Tensor], image_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """The release's ``_prepare_inputs_for_forward``: each token row, padding included (the pad token's
    embedding), gets its ``<image>`` replaced by the image's tokens; the rows are then left-padded with zero
    vectors to the longest. Returns embeddings, mask and the release's positions ``0 .. L-1`` (it passes no
    position ids, so every row counts from its first, padding, column).

    Example:
        >>> e, m, p = release_splice(lambda i: i[..., None].float(), torch.tensor([[0, 5, 9], [5, 6, 7]]),
        ...                          torch.tensor([[0, 1, 1], [1, 1, 1]]), [torch.ones(2, 1)], 9)
        >>> e[..., 0].tolist(), m.tolist(), p.tolist()
        ([[0.0, 5.0, 1.0, 1.0], [0.0, 5.0, 6.0, 7.0]], [[0, 1, 1, 1], [0, 1, 1, 1]], [[0, 1, 2, 3], [0, 1, 2, 3]])
    """
    embeds = embed_tokens(input_ids)
    rows, masks, k = [], [], 0
    for ids, emb, mask in zip(input_ids, embeds, attention_mask, strict=True):
        parts, mask_parts, start = [], [], 0
        for pos in (ids == image_token_id).nonzero().flatten().tolist():
            parts += [emb[start:pos], image_tokens[k].to(emb.dtype)]
            mask_parts += [mask[start:pos], mask.new_ones(len(image_tokens[k]))]
            k, start = k + 1, pos + 1
        rows.append(torch.cat([*parts, emb[start:]]))
        masks.append(torch.cat([*mask_parts, mask[start:]]))
    length = max(len(r) for r in rows)
    out = embeds.new_zeros(len(rows), length, embeds.shape[-1])
    new_mask = attention_mask.new_zeros(len(rows), length)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        out[i, length - len(r):], new_mask[i, length - len(m):] = r, m
    positions = torch.arange(length, device=new_mask.device).expand(len(rows), -1)
    return out, new_mask, positions
