"""FiRE's losses: stage 2's InfoNCE + Recall@k surrogates (Patel, Tolias, Matas, CVPR 2022), and stage
1's next-token cross-entropy on caption tokens (``caption_loss``); ``RetrievalLoss``, what any stage-2 loss
implements (``CIRModule``'s ``loss``: ``FireLoss`` or one of your own).

Plain functions and ``nn.Module``s; nothing here depends on Lightning. All computations are
vectorised over the batch (the public release looped in Python).

For similarities ``s`` (queries x candidates) and a query ``i`` with positive ``p``::

    InfoNCE          = cross_entropy(scale * s[i], p)
    rank_ip          = sum over negatives j of sigmoid((s_ij - s_ip) / tau2)
    R_ip (recall@k)  = sigmoid((k - 1 - rank_ip) / tau1)
    L_recall@k       = mean_i (1 - mean_{p in P_i} R_ip)

With several positives, each positive counts the other positives as non-negatives.

Cross-rank negatives (``distributed_loss``): under DDP every rank gathers all ranks' target
embeddings WITH gradient and scores its OWN queries against the whole global batch of targets; two
triplets whose target keys match are positives of each other, also across ranks. Rank ``r`` with ``B_r``
of the ``B`` queries returns its local mean scaled by ``R * B_r / B`` (``R`` ranks). The gather's backward
sums every rank's gradient for each target row and hands each rank the rows it owns; DDP then AVERAGES
parameter gradients over ranks, so the step equals one process computing the loss on the global batch
(the mean over ranks of the returned terms is also the global-batch value).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from cir_lightning.checks import cutoffs, number_in, positive_number
from cir_lightning.distributed import all_gather_rows, all_gather_with_grad, gather_sizes, world
from cir_lightning.errors import CIRConfigError


def _positives(sim: Tensor, positive_mask: Tensor | None) -> Tensor:
    if positive_mask is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError("without `positive_mask`, `sim` must be square (positive = diagonal)")
        return torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    if positive_mask.shape != sim.shape or not bool(positive_mask.any(1).all()):
        raise ValueError("`positive_mask` must have the shape of `sim` and a positive in every row")
    return positive_mask.bool()


def info_nce(sim: Tensor, scale: float = 100.0, positive_mask: Tensor | None = None) -> Tensor:
    """Query -> candidate InfoNCE over ``scale * sim``; with several positives, averaged over them.

    Example:
        >>> sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        >>> round(float(info_nce(sim, scale=10.0)), 4)
        0.0014
    """
    pos = _positives(sim, positive_mask)
    logits = scale * sim
    log_prob = logits.log_softmax(-1)
    if positive_mask is None:
        return -log_prob.diagonal().mean()
    # each positive against the negatives only: mask the other positives out of the softmax
    rows, cols = pos.nonzero(as_tuple=True)
    other_pos = pos[rows].clone()
    other_pos[torch.arange(len(rows)), cols] = False
    masked = logits[rows].masked_fill(other_pos, float("-inf"))
    per_pos = -(masked.log_softmax(-1).gather(1, cols[:, None]).squeeze(1))
    counts = pos.sum(1).to(per_pos.dtype)
    return (torch.zeros(sim.shape[0], dtype=per_pos.dtype, device=sim.device)
            .index_add(0, rows, per_pos) / counts).mean()


def recall_surrogate(sim: Tensor, k: int, tau1: float = 1.0, tau2: float = 0.01,
                     positive_mask: Tensor | None = None) -> Tensor:
    """Smooth Recall@k loss ``mean_i (1 - R_i)`` on raw similarities.

    Args:
        sim: (queries, candidates) similarities.
        k: the recall cut-off.
        tau1: temperature of the outer sigmoid (rank vs. k).
        tau2: temperature of the inner sigmoid (the smooth rank).
        positive_mask: (queries, candidates) booleans; default: the diagonal.

    Example:
        >>> sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.5, 0.4, 0.3]])
        >>> round(float(recall_surrogate(sim, k=1)), 4)
        0.6269
    """
    pos = _positives(sim, positive_mask)
    n_pos = int(pos.sum(1).max())
    # (Q, P) column index of each positive, padded by repeating a valid positive; `valid` marks real ones
    order = pos.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :n_pos]
    valid = pos.gather(1, order)
    s_pos = sim.gather(1, order)  # (Q, P)
    neg = (~pos).to(sim.dtype).unsqueeze(1)  # (Q, 1, N)
    rank = (torch.sigmoid((sim.unsqueeze(1) - s_pos.unsqueeze(2)) / tau2) * neg).sum(-1)  # (Q, P)
    recall = torch.sigmoid((k - 1 - rank) / tau1) * valid
    return (1 - recall.sum(1) / valid.sum(1)).mean()


class RetrievalLoss(nn.Module):
    """What ``CIRModule``'s ``loss`` is: query embeddings scored against target embeddings, returning the terms
    it logs (``train/<term>``), ``"loss"`` (what is minimised) among them. ``FireLoss`` is one; a loss of your own
    subclasses this and implements ``forward`` (``--model.loss mypackage.MyLoss`` in a config or on the command
    line). ``distributed_loss`` calls it, with every rank's targets under cross-rank negatives.

    Example:
        >>> import torch
        >>> from cir_lightning.losses import RetrievalLoss, check_loss
        >>> class Hinge(RetrievalLoss):
        ...     def forward(self, query, target, positive_mask=None):
        ...         sim = query @ target.T
        ...         return {"loss": (sim - sim.diagonal()[:, None] + 0.2).clamp(min=0).mean()}
        >>> check_loss(Hinge())
        >>> sorted(Hinge()(torch.eye(2), torch.eye(2)))
        ['loss']
    """

    @abstractmethod  # marked only, as ``Backbone``'s: ``check_loss`` reads the mark
    def forward(self, query: Tensor, target: Tensor, positive_mask: Tensor | None = None) -> dict[str, Tensor]:
        """The loss terms, ``"loss"`` among them, each a scalar.

        Args:
            query: (Q, D) L2-normalised query embeddings (this rank's).
            target: (N, D) L2-normalised target embeddings (N = Q, or every rank's targets under cross-rank
                negatives).
            positive_mask: (Q, N) bool, the targets that are positives of each query (several triplets may
                share a target image); None: query ``i``'s only positive is target ``i``.
        """
        raise CIRConfigError(f"{type(self).__name__} does not implement `forward(query, target, positive_mask)`, "
                             "which a RetrievalLoss must")


def check_loss(loss: object) -> None:
    """Refuse, in one line, a ``loss`` that is not a ``RetrievalLoss`` implementing ``forward`` (checked when
    ``CIRModule`` is built, not at the first training step).

    Example:
        >>> from cir_lightning.losses import check_loss
        >>> check_loss(torch.nn.MSELoss())
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `loss`: MSELoss is not a `cir_lightning.losses.RetrievalLoss` ...
    """
    if not isinstance(loss, RetrievalLoss) or getattr(type(loss).forward, "__isabstractmethod__", False):
        what = "does not implement `forward`" if isinstance(loss, RetrievalLoss) else \
            "is not a `cir_lightning.losses.RetrievalLoss`"
        raise CIRConfigError(f"`loss`: {type(loss).__name__} {what} (`forward(query, target, positive_mask)` -> "
                             "the terms, \"loss\" among them); subclass RetrievalLoss, or use FireLoss")


class FireLoss(RetrievalLoss):
    """FiRE stage-2 loss: ``w_nce * InfoNCE + sum_k w_k * L_recall@k``, each term returned for logging.

    Args:
        scale: InfoNCE logit scale (1 / temperature; FiRE: 100).
        recall_ks: cut-offs of the recall surrogates (FiRE: 1 and 5).
        recall_weights: their weights (FiRE: 0.4 and 0.15).
        tau1: outer surrogate temperature (FiRE: 1).
        tau2: inner surrogate temperature (FiRE: 0.01).
        contrastive_weight: weight of the InfoNCE term.

    Example:
        >>> from cir_lightning import FireLoss
        >>> import torch
        >>> import torch.nn.functional as F
        >>> loss = FireLoss()
        >>> q = F.normalize(torch.randn(4, 8), dim=-1)
        >>> terms = loss(q, q)
        >>> sorted(terms)
        ['loss', 'loss_infonce', 'loss_recall@1', 'loss_recall@5']
    """

    def __init__(self, scale: float = 100.0, recall_ks: Sequence[int] = (1, 5),
                 recall_weights: Sequence[float] = (0.4, 0.15), tau1: float = 1.0, tau2: float = 0.01,
                 contrastive_weight: float = 1.0) -> None:
        super().__init__()
        if len(recall_ks) != len(recall_weights):
            raise CIRConfigError(f"`loss.recall_ks` {list(recall_ks)} and `loss.recall_weights` {list(recall_weights)} "
                                 "must have the same length")
        if recall_ks:
            cutoffs("loss.recall_ks", list(recall_ks))
        for name, value in (("scale", scale), ("tau1", tau1), ("tau2", tau2)):
            positive_number(f"loss.{name}", value)
        for name, value in (("contrastive_weight", contrastive_weight), *(("recall_weights", w) for w in recall_weights)):
            number_in(f"loss.{name}", value, 0, math.inf)
        if contrastive_weight == 0 and not any(recall_weights):  # the loss would be 0 and nothing trained
            raise CIRConfigError("`loss.contrastive_weight` and every `loss.recall_weights` are 0: the loss is 0 and "
                                 "nothing would be trained; give one of them a positive weight")
        self.scale = scale
        self.recall_ks = [int(k) for k in recall_ks]
        self.recall_weights = [float(w) for w in recall_weights]
        self.tau1 = tau1
        self.tau2 = tau2
        self.contrastive_weight = contrastive_weight

    def forward(self, query: Tensor, target: Tensor, positive_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Loss terms for L2-normalised ``query`` (Q, D) against ``target`` (N, D) embeddings.

        Always in float32, also inside mixed precision: bf16 resolves cosines near 1 only to ~0.004, which
        the scale of 100 and tau2 = 0.01 would blow up to errors of whole logits."""
        with torch.autocast(query.device.type, enabled=False):
            sim = query.float() @ target.float().T
        terms = {"loss_infonce": info_nce(sim, self.scale, positive_mask)}
        total = self.contrastive_weight * terms["loss_infonce"]
        for k, w in zip(self.recall_ks, self.recall_weights, strict=True):
            terms[f"loss_recall@{k}"] = recall_surrogate(sim, k, self.tau1, self.tau2, positive_mask)
            total = total + w * terms[f"loss_recall@{k}"]
        terms["loss"] = total
        return terms


# ---------------------------------------------------------------------------- cross-rank negatives
def distributed_loss(loss: RetrievalLoss, query: Tensor, target: Tensor, target_keys: Tensor,
                          cross_rank: bool = True, group: Any = None) -> dict[str, Tensor]:
    """``loss`` terms for this rank's triplets; with ``cross_rank``, against every rank's targets.

    Args:
        loss: the loss applied to (queries x candidates): ``FireLoss``, or any ``RetrievalLoss``.
        query: this rank's L2-normalised query embeddings (B_r, D).
        target: this rank's target embeddings (B_r, D), one per query.
        target_keys: (B_r,) integer identities of the targets (``targets.target_keys``); two
            triplets whose keys match are positives of each other, on any rank.
        cross_rank: gather the targets of all ranks (with gradient) as negatives. Without it, or in one
            process, each rank uses its own batch only.
        group: the process group (default: the world).

    Returns:
        The terms of ``loss``. Under DDP with ``cross_rank`` each is this rank's mean over its queries
        times ``R * B_r / B``: the mean over ranks is the global-batch value, and DDP's averaging of the
        gradients of ``"loss"`` gives the gradient of the loss on the global batch.

    Example:
        >>> import torch.nn.functional as F
        >>> q = F.normalize(torch.randn(4, 8), dim=-1)
        >>> keys = torch.tensor([7, 8, 7, 9])  # triplets 0 and 2 share their target
        >>> terms = distributed_loss(FireLoss(), q, q, keys)
        >>> bool(torch.isclose(terms["loss"], FireLoss()(q, q, keys[:, None] == keys[None, :])["loss"]))
        True
    """
    if not cross_rank or world(group)[1] == 1:
        mask = target_keys[:, None] == target_keys[None, :]
        return _terms(loss, query, target, mask if int(mask.sum()) > len(target_keys) else None)
    sizes = gather_sizes(query.shape[0], query.device, group)
    targets = all_gather_with_grad(target.float(), group)
    keys = torch.cat(all_gather_rows(target_keys.to(torch.long), sizes, group))
    terms = _terms(loss, query, targets, target_keys.to(torch.long)[:, None] == keys[None, :])
    weight = len(sizes) * query.shape[0] / sum(sizes)
    return {name: value * weight for name, value in terms.items()}


def _terms(loss: RetrievalLoss, query: Tensor, target: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
    terms = loss(query, target, mask)
    if not isinstance(terms, dict) or not isinstance(terms.get("loss"), Tensor):
        raise CIRConfigError(f"`loss`: {type(loss).__name__}.forward returned {type(terms).__name__}"
                             f"{f' with keys {sorted(map(str, terms))}' if isinstance(terms, dict) else ''}; a "
                             "RetrievalLoss returns a dict of its terms, the tensor \"loss\" among them")
    return terms


def caption_loss(logits: Tensor, targets: Tensor, group: Any = None) -> Tensor:
    """FiRE stage 1: next-token cross-entropy, averaged over the caption tokens of the GLOBAL batch.

    ``logits`` (N, vocab) and ``targets`` (N,) are this rank's labelled tokens (``Backbone.caption_logits``).
    Under ``torch.distributed`` the token count is summed over ranks and the local sum is divided by it and
    multiplied by the world size: DDP's averaging of gradients then gives exactly the gradient of the
    mean over all ranks' tokens (ranks whose captions are longer weigh more, as in one process), and the
    mean over ranks of the returned value is that global mean. In one process: the plain token mean.

    Example:
        >>> logits, targets = torch.randn(5, 11), torch.tensor([1, 2, 3, 4, 5])
        >>> bool(torch.isclose(caption_loss(logits, targets), nn.functional.cross_entropy(logits, targets)))
        True
    """
    total = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    count = torch.tensor(float(targets.numel()), device=logits.device)
    world_size = world(group)[1]
    if world_size > 1:
        dist.all_reduce(count, group=group)
    return total * world_size / count.clamp(min=1)
