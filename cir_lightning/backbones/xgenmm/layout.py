"""Where every row of xGen-MM's vision and decoder inputs comes from, worked out on the host in one read.

The forward picks the real crops out of the padded pixels, regroups each image's crop features for the
perceiver, and splices each ``<image>``'s tokens into its row. All three depend on the batch's numbers
(crops per image, image sizes, where the ``<image>`` tokens are), and reading a device tensor's values on the
host waits for all the work queued on the GPU, which then idles while the host catches up. The original
code (and ours before) read them row by row: 5 reads per row and 4 per batch, 84 at batch 16, some right
after the vision tower had been queued. ``splice_layout`` reads them all at once, before anything is
queued, and turns them into index tensors; the forward then only gathers (``tensor[index]``), which copies
values exactly, so the outputs are bit-identical to the row-by-row splice.

Example:
    >>> ids = torch.tensor([[0, 0, 9, 6], [5, 6, 7, 8]])        # 9 = <image>; row 0 is left-padded
    >>> mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    >>> lay = splice_layout(ids, mask, torch.tensor([1]), torch.tensor([[20, 20]]), max_crops=1,
    ...                     image_token_id=9, num_vis_tokens=2, side=1, crop_size=14, grids=[[28, 14]])
    >>> lay.splice_index.tolist(), lay.splice_mask.tolist(), lay.lengths
    ([[10, 8, 9, 3], [4, 5, 6, 7]], [[0, 1, 1, 1], [1, 1, 1, 1]], [3, 4])

    Rows 0-7 of the gather source are the 2 x 4 token embeddings, 8-9 the image's 2 tokens, 10 a zero row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from cir_lightning.errors import CIRModelError


class SpliceLayout(NamedTuple):
    """Index tensors (on the host until ``to``) and host numbers for one batch."""

    crop_index: Tensor
    """(crops,) rows of ``pixel_values.flatten(0, 1)`` that are real crops, image by image."""
    group_index: Tensor
    """(groups, side * side) rows of the crop features ``flatten(0, 1)`` making each perceiver group."""
    media_mask: Tensor
    """(groups, side * side) bool: the group's token is image, not letterbox."""
    splice_index: Tensor
    """(rows, length) rows of [token embeddings ``flatten(0, 1)``; image tokens; one zero row] per position."""
    splice_mask: Tensor
    """(rows, length) attention mask of the spliced, left-padded batch."""
    tokens_per_image: list[int]
    """Visual tokens of each image (its groups x ``num_vis_tokens``)."""
    lengths: list[int]
    """Real tokens of each spliced row."""

    def to(self, device: torch.device) -> SpliceLayout:
        """The index tensors on ``device``; copies from the host do not wait for the GPU's queued work."""
        moved = (t.to(device, non_blocking=True) for t in self[:5])
        return SpliceLayout(*moved, self.tokens_per_image, self.lengths)


def select_best_resolution(size: tuple[int, int], grids: list[list[int]]) -> tuple[int, int]:
    """The (width, height) canvas of ``grids`` keeping most of an image of PIL ``size`` (w, h).

    Maximises ``min(int(w*s) * int(h*s), w*h)`` with ``s = min(W/w, H/h)``; ties: least wasted area.

    Example:
        >>> from cir_lightning.backbones.xgenmm.modeling import ANYRES_GRIDS
        >>> select_best_resolution((1000, 500), ANYRES_GRIDS)  # 2:1 landscape -> two crops side by side
        (768, 384)
        >>> select_best_resolution((300, 1000), ANYRES_GRIDS)
        (384, 1152)
    """
    w, h = size
    best, best_eff, best_waste = None, -1, float("inf")
    for gw, gh in grids:
        s = min(gw / w, gh / h)
        eff = min(int(w * s) * int(h * s), w * h)
        waste = gw * gh - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (gw, gh), eff, waste
    assert best is not None
    return best


def unpad_mask(size: tuple[int, int], rows: int, cols: int) -> Tensor:
    """(rows, cols) mask of the feature map that is image, not letterbox (``size`` is PIL (w, h)).

    Example:
        >>> unpad_mask((1000, 200), 4, 8).sum(1).tolist()  # very wide image: top and bottom rows are padding
        [0.0, 8.0, 8.0, 0.0]
    """
    w, h = size
    mask = torch.ones(rows, cols)
    if w / h > cols / rows:
        pad = (rows - int(h * (cols / w))) // 2
        mask[:pad], mask[rows - pad:] = 0, 0
    else:
        pad = (cols - int(w * (rows / h))) // 2
        mask[:, :pad], mask[:, cols - pad:] = 0, 0
    return mask


def _image_groups(first: int, crops: int, size: tuple[int, int], side: int, crop_size: int,
                  grids: list[list[int]]) -> tuple[Tensor, Tensor]:
    """One image's perceiver groups as rows of the flattened crop features, and their masks.

    Group 0 is the base view. The anyres crops' map is regrouped as the original does: into contiguous
    bands of ``side * side`` tokens of the full-width map (not the spatial crops when the grid is wider than
    one crop); the trained perceiver expects this grouping, so it is reproduced exactly.
    """
    ss = side * side
    base = (first * ss + torch.arange(ss))[None]
    if crops == 1:
        return base, torch.ones(1, ss, dtype=torch.bool)
    gw, gh = select_best_resolution(size, grids)
    npw, nph = gw // crop_size, gh // crop_size
    if crops != 1 + npw * nph:
        raise CIRModelError(f"an image of size {size} has {crops} crops; its anyres grid "
                            f"{npw}x{nph} needs {1 + npw * nph}: processor and model grids differ")
    tokens = (first + 1) * ss + torch.arange(npw * nph * ss)
    grid = tokens.reshape(nph, npw, side, side).permute(0, 2, 1, 3).reshape(nph * npw, ss)
    mask = unpad_mask(size, nph * side, npw * side).bool().reshape(nph * npw, ss)
    return torch.cat([base, grid]), torch.cat([torch.ones(1, ss, dtype=torch.bool), mask])


def _host(input_ids: Tensor, attention_mask: Tensor, num_crops: Tensor | None,
          image_sizes: Tensor | None) -> tuple[Tensor, Tensor, list[int], list[tuple[int, int]]]:
    """The batch's numbers on the host, in one device-to-host copy."""
    parts = [input_ids.flatten(), attention_mask.flatten().long()]
    if num_crops is not None and image_sizes is not None:
        parts += [num_crops.flatten().long(), image_sizes.flatten().long()]
    host = torch.cat(parts).cpu()
    n = input_ids.numel()
    ids, mask = host[:n].view(input_ids.shape), host[n:2 * n].view(input_ids.shape).bool()
    rest = host[2 * n:].tolist()
    images = len(rest) // 3
    sizes = [(int(rest[images + 2 * i]), int(rest[images + 2 * i + 1])) for i in range(images)]
    return ids, mask, [int(c) for c in rest[:images]], sizes


def splice_layout(input_ids: Tensor, attention_mask: Tensor, num_crops: Tensor | None, image_sizes: Tensor | None,
                  *, max_crops: int, image_token_id: int, num_vis_tokens: int, side: int, crop_size: int,
                  grids: list[list[int]]) -> SpliceLayout:
    """The batch's layout (host tensors): one read of ``input_ids``, ``attention_mask``, ``num_crops`` and
    ``image_sizes``; checks that every image has its ``<image>`` token and a crop count its grid allows.

    Args:
        input_ids: (rows, L) token ids, either padding side.
        attention_mask: (rows, L) 1 for real tokens; padding is dropped and the spliced rows left-padded.
        num_crops: (images,) real crops per image; ``None`` for text-only inputs.
        image_sizes: (images, 2) original (width, height).
        max_crops: ``pixel_values.shape[1]`` (crops are padded to it).
        image_token_id: the ``<image>`` token; images are taken in reading order over the batch.
        num_vis_tokens: perceiver latents per group; side: patches per crop side; crop_size: crop pixels;
        grids: the anyres canvases.
    """
    ids, mask, crops, sizes = _host(input_ids, attention_mask, num_crops, image_sizes)
    rows, width = ids.shape
    found = int((ids[mask] == image_token_id).sum())
    if found != len(crops):
        raise CIRModelError(f"the batch has {found} `<image>` token(s) but {len(crops)} image(s)")
    crop_index, groups, masks, first = [], [], [], 0
    for i, (n, size) in enumerate(zip(crops, sizes, strict=True)):
        if not 1 <= n <= max_crops:  # a gather past its image's slots would read another image's crops
            raise CIRModelError(f"image {i} of the batch has {n} crop(s), but `pixel_values` holds "
                                f"{'no images' if max_crops == 0 else f'1 to {max_crops} per image'}")
        crop_index.append(i * max_crops + torch.arange(n))
        g, m = _image_groups(first, n, size, side, crop_size, grids)
        groups.append(g)
        masks.append(m)
        first += n
    tokens = [len(g) * num_vis_tokens for g in groups]
    image_start = rows * width + torch.tensor([0, *tokens]).cumsum(0)
    zero = int(image_start[-1])
    spliced, k = [], 0
    for r in range(rows):
        real = mask[r].nonzero().flatten()
        source, parts, start = r * width + real, [], 0
        for pos in (ids[r, real] == image_token_id).nonzero().flatten().tolist():
            parts += [source[start:pos], image_start[k] + torch.arange(tokens[k])]
            k, start = k + 1, pos + 1
        spliced.append(torch.cat([*parts, source[start:]]))
    lengths = [len(s) for s in spliced]
    length = max(lengths, default=0)
    splice_index = torch.full((rows, length), zero, dtype=torch.long)
    splice_mask = torch.zeros(rows, length, dtype=attention_mask.dtype)
    for r, s in enumerate(spliced):
        splice_index[r, length - len(s):] = s
        splice_mask[r, length - len(s):] = 1
    ss = side * side
    empty = torch.zeros(0, ss, dtype=torch.long)
    return SpliceLayout(torch.cat([torch.zeros(0, dtype=torch.long), *crop_index]), torch.cat([empty, *groups]),
                        torch.cat([empty.bool(), *masks]), splice_index, splice_mask, tokens, lengths)
