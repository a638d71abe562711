"""The interface every backbone implements, usable with or without Lightning.

A backbone maps pre-processed inputs (tensors made by its ``collator`` in DataLoader workers) to
L2-normalised embeddings with ``forward`` (the training path). The ``encode_*`` methods are the
inference front door for raw PIL images and strings: they run the collator in the calling process,
then ``forward`` without gradients and in eval mode (no dropout; the module's mode is restored after).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn


class Backbone(nn.Module):
    """Base class: subclasses set ``self.collator`` and implement ``forward`` and ``fingerprint``; those with
    LoRA set ``self.lora`` and ``self.model`` (the peft model), which ``save_adapter`` writes."""

    collator: Any

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        """Embed a batch of inputs: (batch, dim), L2-normalised, float32."""
        raise NotImplementedError

    @property
    def embedding_dim(self) -> int:  # pragma: no cover - abstract
        """The size of the embeddings ``forward`` returns (known before anything is embedded, so that
        a search index can be checked for it first)."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """What identifies the frozen base model and how it embeds (stored in checkpoints, embedding caches and
        results), including ``base_digest``: ``identity.checkpoint_digest`` of the files it was loaded from."""
        raise NotImplementedError

    def save_adapter(self, path: str | Path) -> None:
        """Write the trained LoRA adapter (peft's ``save_pretrained`` format, what users share) to the
        folder ``path``, which must not exist: it appears complete or not at all, and is never overwritten."""
        from cir_lightning.errors import CIRConfigError
        from cir_lightning.files import write_folder

        if getattr(self, "lora", None) is None:
            raise CIRConfigError("this backbone has no LoRA adapter to save (`lora` is None)")
        write_folder(path, lambda folder: self.model.save_pretrained(str(folder)))

    def caption_logits(self, inputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        """Next-token logits at the labelled positions of a generative batch (FiRE stage 1) and the
        tokens they must predict: ``(N, vocab)`` float32 and ``(N,)``, N = labelled tokens. Only
        backbones with a language-model head implement it."""
        from cir_lightning.errors import CIRConfigError

        raise CIRConfigError(f"{type(self).__name__} has no language-model head, so it cannot be trained to "
                             "generate captions (`objective: caption`, FiRE stage 1); use a multimodal LLM backbone")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def _run(self, inputs: Mapping[str, Tensor]) -> Tensor:
        was_training = self.training
        self.eval()  # deterministic: no dropout in the inference front door
        try:
            return self({k: v.to(self.device) for k, v in inputs.items()})
        finally:
            self.train(was_training)

    def encode_query(self, images: Sequence[Image.Image], modifications: Sequence[str]) -> Tensor:
        """Embed reference images with their modification texts."""
        return self._run(self.collator.query_inputs(images, modifications))

    def encode_gallery(self, images: Sequence[Image.Image]) -> Tensor:
        """Embed gallery (target) images."""
        return self._run(self.collator.gallery_inputs(images))

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Embed texts (e.g. target captions)."""
        return self._run(self.collator.text_inputs(texts))

    def weights_digest(self) -> str:
        """SHA-256 of the trainable weights (names, shapes, values): identifies an adapter's state."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.trainable_state_dict().items()):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The parameters that require gradients, by name (what a checkpoint needs to hold)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}


def check_text_limit(max_text_tokens: int | None, max_positions: int | None, model: str) -> None:
    """A ``max_text_tokens`` above the language model's positions could never be honoured: refuse it.

    Example:
        >>> check_text_limit(512, 1024, "m")
        >>> check_text_limit(2048, 1024, "tiny")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `max_text_tokens` = 2048 is more than the 1024 positions of the language model of `tiny` (`max_position_embeddings`); set it lower
    """
    if max_text_tokens is not None and max_positions is not None and max_text_tokens > max_positions:
        from cir_lightning.errors import CIRConfigError

        raise CIRConfigError(f"`max_text_tokens` = {max_text_tokens} is more than the {max_positions} positions of the "
                             f"language model of `{model}` (`max_position_embeddings`); set it lower")


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute ``model``'s activations during backward instead of storing them (less memory, ~30 %
    more compute). Non-reentrant checkpointing, so it works with a frozen base model and LoRA layers."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        from cir_lightning.errors import CIRConfigError

        raise CIRConfigError(f"{type(model).__name__} does not support gradient checkpointing")


def next_token_logits(hidden: Tensor, labels: Tensor, head: nn.Module) -> tuple[Tensor, Tensor]:
    """The head's logits where a token is predicted, and those tokens: position t predicts label t+1.

    Only the labelled positions go through ``head``, never the whole (batch, length, vocab) tensor.

    Example:
        >>> hidden, head = torch.randn(1, 4, 3), nn.Linear(3, 10)
        >>> logits, targets = next_token_logits(hidden, torch.tensor([[-100, -100, 7, 2]]), head)
        >>> logits.shape, targets.tolist(), torch.allclose(logits[0], head(hidden[0, 1]))
        (torch.Size([2, 10]), [7, 2], True)
    """
    targets = labels[:, 1:]
    keep = targets != -100
    return head(hidden[:, :-1][keep]).float(), targets[keep]
