"""Pooling of decoder hidden states into one vector per sequence, independent of the padding side."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

PoolingMethod = Literal["eos_block", "last_token"]


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


def pool(hidden: Tensor, attention_mask: Tensor, method: PoolingMethod = "eos_block", block: int = 5) -> Tensor:
    """Pool ``hidden`` (batch, seq, dim) to (batch, dim), not normalised.

    Args:
        hidden: last-layer hidden states.
        attention_mask: 1 for real tokens, 0 for padding.
        method: ``"eos_block"`` averages the last ``block`` real tokens (the appended EOS block);
            ``"last_token"`` takes the last real token.
        block: size of the EOS block.

    Example:
        >>> import torch
        >>> h = torch.arange(8.).view(1, 4, 2)
        >>> pool(h, torch.tensor([[0, 1, 1, 1]]), "eos_block", 2).tolist()
        [[5.0, 6.0]]
        >>> pool(h, torch.tensor([[1, 1, 1, 0]]), "last_token").tolist()
        [[4.0, 5.0]]
    """
    n = 1 if method == "last_token" else block
    keep = last_real_tokens_mask(attention_mask, n).unsqueeze(-1)
    # where(), not a product: a NaN or inf in a padded position must not leak into the embedding
    total = torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(1)
    return total / keep.sum(1).clamp(min=1).to(hidden.dtype)
