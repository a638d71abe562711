"""Which training triplets share a target image: written into a batch by the collators (``target_identity``) and
read back by the loss (``target_keys``), so that two triplets with the same target are positives of each other,
within a batch and, under cross-rank negatives, across DDP ranks (``key_id``: the same number in every process).

Below both ``backbones`` (whose ``SampleBatches`` calls ``target_identity``) and ``losses``; torch only.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["key_id", "target_identity", "target_keys"]


def key_id(key: str) -> int:
    """A 63-bit integer identity of a target key, the same in every process (unlike ``hash``).

    Example:
        >>> from cir_lightning.targets import key_id
        >>> key_id("images/b.png") == key_id("images/b.png") != key_id("images/c.png")
        True
    """
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def target_identity(samples: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Which training samples share a target: ``target_group`` (the first row in the batch with the same
    target) and, when every sample has a ``target_key``, ``target_id`` (a stable 63-bit id of the key, equal
    on every rank, so duplicates across DDP ranks are recognised too).

    Example:
        >>> from cir_lightning.targets import target_identity
        >>> ident = target_identity([{"target_key": "a"}, {"target_key": "b"}, {"target_key": "a"}])
        >>> ident["target_group"].tolist(), ident["target_id"][0] == ident["target_id"][2]
        ([0, 1, 0], tensor(True))
    """
    keys = [s.get("target_key", i) for i, s in enumerate(samples)]
    first = {key: i for i, key in reversed(list(enumerate(keys)))}
    out = {"target_group": torch.tensor([first[key] for key in keys], dtype=torch.long)}
    if all("target_key" in s for s in samples):
        out["target_id"] = torch.tensor([key_id(str(k)) for k in keys], dtype=torch.long)
    return out


def target_keys(batch: dict[str, Any], cross_rank: bool) -> Tensor:
    """(B,) integer target identities of a training batch: equal keys = the same target image, on any rank.

    Taken from ``batch["target_id"]``, which the collators give when every sample has a ``target_key`` (every
    training dataset here does); else the in-batch groups (``target_group``), which cannot see a target shared
    across ranks (such pairs then count as negatives; warned once).

    Example:
        >>> from cir_lightning.targets import target_keys
        >>> target_keys({"index": torch.tensor([4, 5, 6]), "target_group": torch.tensor([0, 1, 0])}, False).tolist()
        [4, 5, 4]
    """
    if "target_id" in batch:
        return batch["target_id"].long()
    index, group = batch["index"].long(), batch.get("target_group")
    if cross_rank:
        warnings.warn("cross-rank negatives: the training samples have no `target_key`, so a target shared by "
                      "triplets on different ranks counts as a negative across ranks; give each sample a "
                      "`target_key` naming its target image", stacklevel=2)
    return index if group is None else index[group.long()]
