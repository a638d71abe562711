"""The interface every backbone implements, and the loading steps they share; usable with or without Lightning.

A backbone maps pre-processed inputs (tensors made by its ``collator`` in DataLoader workers) to
L2-normalised embeddings with ``forward`` (the training path). The ``encode_*`` methods are the
inference front door for raw PIL images and strings: they run the collator in the calling process,
then ``forward`` without gradients and in eval mode (no dropout; the module's mode is restored after).

Every backbone loads the same way: an optional tiny random checkpoint for demos (``build_tiny_if_missing``),
a dtype name from ``DTYPES``, ``from_pretrained`` calls through ``load_checkpoint`` (one message for a
checkpoint that cannot be loaded: ``load_error``), then ``Backbone._prepare``: freeze, gradient
checkpointing, train mode, LoRA.
"""

from __future__ import annotations

import hashlib
import os
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor, nn

from cir_lightning.backbones.adapters import write_base_record
from cir_lightning.backbones.batches import SampleBatches
from cir_lightning.backbones.contract import unimplemented
from cir_lightning.backbones.identity import check_readable
from cir_lightning.backbones.lora import LoRA, add_lora
from cir_lightning.errors import CIRConfigError, CIRModelError
from cir_lightning.files import write_folder

Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The weight dtypes a backbone's ``dtype`` option names."""
T = TypeVar("T")


class Backbone(nn.Module):
    """Base class: a subclass loads its model in ``__init__`` (``model_name_or_path`` and ``base_digest`` set
    first), hands it to ``_prepare`` (freezing, LoRA on ``target``; sets ``self.model``, the peft model when
    there is LoRA, which ``save_adapter`` writes, and ``self.lora``), sets ``self.collator`` (a
    ``SampleBatches``), and implements ``forward``, ``embedding_dim`` and ``fingerprint``
    (``contract.BACKBONE_PARTS``: what each is for; ``CIRModule`` names any that is missing). Configs name it by
    ``class_path``; ``factory.register_backbone`` lets ``build_backbone`` build it too.

    Example:
        >>> from cir_lightning.backbones.base import Backbone
        >>> bb = Backbone()
        >>> bb._prepare(nn.Linear(2, 2), lora=None, target=None, gradient_checkpointing=False)
        >>> bb.base_model is bb.model, bb.training, any(p.requires_grad for p in bb.parameters())
        (True, True, False)
    """

    collator: SampleBatches  # set in ``__init__``: the batches ``forward`` takes, made in DataLoader workers
    lora: LoRA | None = None  # the LoRA settings (None: everything frozen); set by ``_prepare``
    # the base weights, set by subclasses before ``_prepare``: what a saved adapter records it was trained on
    model_name_or_path: str | None = None
    base_digest: str | None = None  # ``identity.checkpoint_digest`` of the files loaded
    # the several texts of one query are summed before normalising (E5-V): ``forward`` then takes ``normalize``
    combine_raw: bool = False

    @abstractmethod  # marked only (the class stays instantiable): ``contract.check_backbone`` reads the marks
    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Embed a batch of inputs: (batch, dim), L2-normalised, float32."""
        raise unimplemented(self, "forward")

    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        """The size of the embeddings ``forward`` returns (known before anything is embedded, so that
        a search index can be checked for it first)."""
        raise unimplemented(self, "embedding_dim")

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies the frozen base model and how it embeds (stored in checkpoints, embedding caches and
        results), including ``base_digest``: ``identity.checkpoint_digest`` of the files it was loaded from."""
        raise unimplemented(self, "fingerprint")

    def _prepare(self, model: nn.Module, lora: LoRA | None, target: Any,
                 gradient_checkpointing: bool, checkpointed: nn.Module | None = None) -> None:
        """Freeze the loaded ``model``, enable gradient checkpointing on it (or on its part ``checkpointed``),
        put it in train mode (``from_pretrained`` returns eval mode; Lightning switches modes from here on)
        and add ``lora`` on the ``target`` modules (peft's ``target_modules``: a regex or names; unused
        without LoRA); sets ``self.model`` and ``self.lora``."""
        model.requires_grad_(False)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model if checkpointed is None else checkpointed)
        model.train()
        self.lora = lora
        base = (self.model_name_or_path, self.base_digest)
        self.model = add_lora(model, lora, target, base) if lora is not None else model

    @property
    def base_model(self) -> Any:
        """The loaded model with the LoRA layers injected (peft's wrapper removed)."""
        return self.model.get_base_model() if self.lora is not None else self.model

    @property
    def peft_model(self) -> Any:
        """peft's wrapper around the loaded model (what ``save_adapter`` writes); None without LoRA."""
        return self.model if self.lora is not None else None

    def identity(self, precision: object = "32-true") -> dict[str, Any]:
        """What identifies this backbone's embeddings in caches and prediction folders: the fingerprint, the
        weights digest and, under mixed or half precision (the trainer's ``precision``), that precision
        (32-bit identities stay what they were, and so do their caches)."""
        mixed = {} if "32" in str(precision) else {"precision": str(precision)}
        return {"fingerprint": self.fingerprint(), "weights": self.weights_digest(), **mixed}

    def dtype_key(self) -> dict[str, str]:
        """``{"dtype": name}`` for a fingerprint when the weights are not float32 (bf16 embeddings differ from
        float32 ones; float32 fingerprints keep the keys, and the caches and indexes, they had)."""
        name = str(self.base_model.dtype).removeprefix("torch.")
        return {} if name == "float32" else {"dtype": name}

    def save_adapter(self, path: str | Path, reserved: bool = False) -> None:
        """Write the trained LoRA adapter (peft's ``save_pretrained`` format, what users share) to the
        folder ``path``, which must not exist (or be the empty folder ``free_names.reserve_folder`` claimed:
        ``reserved``): it appears complete or not at all, and is never overwritten."""
        if self.lora is None:
            raise CIRConfigError("this backbone has no LoRA adapter to save (`lora` is None)")
        def write(folder: Path) -> None:
            self.model.save_pretrained(str(folder))
            write_base_record(folder, (self.model_name_or_path, self.base_digest))

        write_folder(path, write, reserved=reserved)

    def caption_logits(self, inputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        """Next-token logits at the labelled positions of a generative batch (FiRE stage 1) and the
        tokens they must predict: ``(N, vocab)`` float32 and ``(N,)``, N = labelled tokens. Only
        backbones with a language-model head implement it."""
        raise CIRConfigError(f"{type(self).__name__} has no language-model head, so it cannot be trained to "
                             "generate captions (`objective: caption`, FiRE stage 1); use a multimodal LLM backbone")

    def embed_batch(self, batch: Mapping[str, Any], side: str) -> Tensor:
        """Embeddings of one side (``"query"``, ``"gallery"``, ...) of a collated batch, one row per sample:
        where a query has several texts (``query_groups``, e.g. both caption orders) their embeddings are
        averaged and renormalised (with ``combine_raw``: their pooled states summed, then normalised)."""
        groups = batch.get("query_groups") if side == "query" else None
        if groups is None:
            return self(batch[side])
        embeddings = self(batch[side], normalize=False) if self.combine_raw else self(batch[side])
        summed = embeddings.new_zeros(len(batch["index"]), embeddings.shape[1]).index_add_(0, groups, embeddings)
        return torch.nn.functional.normalize(summed, dim=-1)

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


def load_error(name: str, err: BaseException) -> CIRModelError:
    """The error for a checkpoint ``name`` that cannot be loaded: one message for every backbone.

    A name that is not a local folder was looked up on the hub, so the message says so (and whether
    offline mode is on) and what to do.

    Example:
        >>> from cir_lightning.backbones.base import load_error
        >>> str(load_error("someone/nothing", OSError("404")))  # doctest: +ELLIPSIS
        'cannot load model `someone/nothing`: it is not a local folder and cannot be fetched from the hub...: OSError: 404. Check the name, or pass the path of a downloaded checkpoint.'
    """
    if Path(name).is_dir():
        return CIRModelError(f"cannot load model `{name}`: {err}.")
    if Path(name).is_absolute() or name.startswith(("./", "../", "~")):  # a path, never a hub name
        return CIRModelError(f"cannot load model `{name}`: the folder does not exist (moved or deleted?)")
    offline = " (offline mode is on: HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return CIRModelError(f"cannot load model `{name}`: it is not a local folder and cannot be fetched from the "
                         f"hub{offline}: {type(err).__name__}: {err}. Check the name, or pass the path of a "
                         "downloaded checkpoint.")


def load_checkpoint(name: str, load: Callable[[], T]) -> T:
    """Run ``load()`` (``from_pretrained`` calls) for the checkpoint ``name``, with one clear error.

    A local folder is first checked for unreadable, missing or dangling files (transformers reports an
    unreadable file as "No such file or directory"); what ``load`` raises becomes ``load_error``'s message.

    Example:
        >>> from cir_lightning.backbones.base import load_checkpoint
        >>> load_checkpoint("someone/nothing", lambda: 1)
        1
        >>> load_checkpoint("someone/nothing", lambda: open("someone/nothing"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRModelError: cannot load model `someone/nothing`: it is not a local folder and ...
    """
    if Path(name).exists():
        check_readable(name)
    try:
        return load()
    except (OSError, ValueError, KeyError) as err:
        raise load_error(name, err) from err


def build_tiny_if_missing(path: str, what: str, build: Callable[[str], Any]) -> None:
    """Build a tiny RANDOMLY INITIALISED checkpoint at ``path`` with ``build`` unless ``path`` exists, and
    say so loudly (the ``make_tiny_if_missing`` option of every backbone: demos and tests).

    Example:
        >>> from cir_lightning.backbones.base import build_tiny_if_missing
        >>> build_tiny_if_missing(".", "model", print)  # it exists: nothing is built
    """
    if Path(path).exists():
        return
    rank_zero_warn(f"`{path}` does not exist: building a tiny RANDOMLY INITIALISED {what} there "
                   "(`make_tiny_if_missing: true`, meant for demos and tests). Set it to false to load a real "
                   "checkpoint by hub name.", stacklevel=5)  # points at the backbone's constructor
    build(path)


def check_text_limit(max_text_tokens: int | None, max_positions: int | None, model: str) -> None:
    """A ``max_text_tokens`` above the language model's positions could never be honoured: refuse it.

    Example:
        >>> from cir_lightning.backbones.base import check_text_limit
        >>> check_text_limit(512, 1024, "m")
        >>> check_text_limit(2048, 1024, "tiny")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `max_text_tokens` = 2048 is more than the 1024 positions of the language model of `tiny` (`max_position_embeddings`); set it lower
    """
    if max_text_tokens is not None and max_positions is not None and max_text_tokens > max_positions:
        raise CIRConfigError(f"`max_text_tokens` = {max_text_tokens} is more than the {max_positions} positions of the "
                             f"language model of `{model}` (`max_position_embeddings`); set it lower")


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute ``model``'s activations during backward instead of storing them (less memory, ~30 %
    more compute). Non-reentrant checkpointing, so it works with a frozen base model and LoRA layers.

    Example:
        >>> from cir_lightning.backbones.base import enable_gradient_checkpointing
        >>> enable_gradient_checkpointing(nn.Linear(2, 2))
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: Linear does not support gradient checkpointing
    """
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise CIRConfigError(f"{type(model).__name__} does not support gradient checkpointing")


def next_token_logits(hidden: Tensor, labels: Tensor, head: nn.Module) -> tuple[Tensor, Tensor]:
    """The head's logits where a token is predicted, and those tokens: position t predicts label t+1.

    Only the labelled positions go through ``head``, never the whole (batch, length, vocab) tensor.

    Example:
        >>> from cir_lightning.backbones.base import next_token_logits
        >>> hidden, head = torch.randn(1, 4, 3), nn.Linear(3, 10)
        >>> logits, targets = next_token_logits(hidden, torch.tensor([[-100, -100, 7, 2]]), head)
        >>> logits.shape, targets.tolist(), torch.allclose(logits[0], head(hidden[0, 1]))
        (torch.Size([2, 10]), [7, 2], True)
    """
    targets = labels[:, 1:]
    keep = targets != -100
    return head(hidden[:, :-1][keep]).float(), targets[keep]
