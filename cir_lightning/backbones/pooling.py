"""Pooling of decoder hidden states into one vector per sequence, independent of the padding side."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from cir_lightning.errors import CIRModelError

PoolingMethod = Literal["eos_block", "last_token", "before_marker"]


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that count real tokens only, so left padding does not shift them.

    Example:
        >>> import torch
        >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])).tolist()
        [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_real_tokens_mask(attention_mask: Tensor, n: int) -> Tensor:
    """A boolean mask of the last ``n`` real (unpadded) tokens of each row, for left or right padding.

    Example:
        >>> import torch
        >>> last_real_tokens_mask(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]]), 2).int().tolist()
        [[0, 0, 1, 1], [0, 1, 1, 0]]
    """
    mask = attention_mask.bool()
    from_end = mask.flip(-1).long().cumsum(-1).flip(-1)  # 1 at the last real token, 2 before it, ...
    return mask & (from_end <= n)


def before_marker_index(input_ids: Tensor, attention_mask: Tensor, marker_id: int) -> Tensor:
    """Per row, the position just before the first real ``marker_id`` token (LamRA's ``<emb>``).

    Example:
        >>> import torch
        >>> ids, mask = torch.tensor([[0, 5, 6, 9, 9], [5, 6, 7, 9, 0]]), torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
        >>> before_marker_index(ids, mask, 9).tolist()
        [2, 2]
    """
    found = (input_ids == marker_id) & attention_mask.bool()
    if not bool(found.any(-1).all()):
        rows = (~found.any(-1)).nonzero().flatten().tolist()
        raise CIRModelError(f"`before_marker` pooling: row(s) {rows} of the batch hold no marker token (id "
                            f"{marker_id}); the prompt templates must contain the marker")
    first = found.int().argmax(-1)
    if bool((first == 0).any()) or not bool(attention_mask.gather(1, (first - 1).clamp(min=0)[:, None]).all()):
        raise CIRModelError("`before_marker` pooling: a marker token is the first real token of its row; "
                            "nothing precedes it to pool")
    return first - 1


def pool(hidden: Tensor, attention_mask: Tensor, method: PoolingMethod = "eos_block", block: int = 5,
         input_ids: Tensor | None = None, marker_id: int | None = None) -> Tensor:
    """Pool ``hidden`` (batch, seq, dim) to (batch, dim), not normalised.

    Args:
        hidden: last-layer hidden states.
        attention_mask: 1 for real tokens, 0 for padding.
        method: ``"eos_block"`` averages the last ``block`` real tokens (the appended EOS block);
            ``"last_token"`` takes the last real token; ``"before_marker"`` takes the token just before
            the first ``marker_id`` token (LamRA's ``<emb>``).
        block: size of the EOS block.
        input_ids: token ids (``before_marker`` only).
        marker_id: id of the marker token (``before_marker`` only).

    Example:
        >>> import torch
        >>> h = torch.arange(8.).view(1, 4, 2)
        >>> pool(h, torch.tensor([[0, 1, 1, 1]]), "eos_block", 2).tolist()
        [[5.0, 6.0]]
        >>> pool(h, torch.tensor([[1, 1, 1, 0]]), "last_token").tolist()
        [[4.0, 5.0]]
        >>> pool(h, torch.tensor([[1, 1, 1, 1]]), "before_marker", input_ids=torch.tensor([[3, 4, 9, 1]]),
        ...      marker_id=9).tolist()
        [[2.0, 3.0]]
    """
    if method == "before_marker":
        if input_ids is None or marker_id is None:
            raise CIRModelError("`before_marker` pooling needs `input_ids` and `marker_id`")
        index = before_marker_index(input_ids, attention_mask, marker_id)
        return hidden[torch.arange(len(hidden), device=hidden.device), index]
    n = 1 if method == "last_token" else block
    keep = last_real_tokens_mask(attention_mask, n).unsqueeze(-1)
    # where(), not a product: a NaN or inf in a padded position must not leak into the embedding
    total = torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(1)
    return total / keep.sum(1).clamp(min=1).to(hidden.dtype)
