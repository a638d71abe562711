"""xGen-MM (BLIP-3, FiRE's backbone) as a retrieval backbone, native on transformers 5.

Loads a checkpoint folder strictly (``loading.load_xgenmm``; no remote code), freezes it, adds LoRA on
the Phi-3 decoder only (peft, targets anchored at ``vlm.lang_model.model``), and embeds by running the
decoder over the spliced sequence: last hidden states averaged over the appended ``<|end|>`` block (or
the last token), L2-normalised. The spliced batch is rebuilt from the real tokens of every row and
left-padded, with positions from its mask, so left- and right-padded inputs give the same embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cir_lightning.backbones.base import (
    DTYPES,
    Backbone,
    Dtype,
    build_tiny_if_missing,
    check_text_limit,
    load_error,
    next_token_logits,
)
from cir_lightning.backbones.collate import MLLMCollator, check_positions
from cir_lightning.backbones.identity import check_readable, checkpoint_digest
from cir_lightning.backbones.lora import LoRA, lora_target_regex
from cir_lightning.backbones.pooling import PoolingMethod, pool, position_ids_from_mask
from cir_lightning.backbones.prompts import Prompts
from cir_lightning.backbones.xgenmm.loading import load_xgenmm
from cir_lightning.backbones.xgenmm.processing import XGenMMProcessor
from cir_lightning.backbones.xgenmm.release import RELEASE_LAST_N, ReleaseCollator, release_splice
from cir_lightning.backbones.xgenmm.tiny import make_tiny_xgenmm
from cir_lightning.checks import non_negative_int, positive_int
from cir_lightning.errors import CIRConfigError, CIRModelError
from cir_lightning.paths import path_option

_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]  # config, weights, tokenizer: no remote code


def _local_folder(name: str, revision: str | None) -> str:
    """``name`` if it is a local folder, else the hub snapshot of its weights, config and tokenizer."""
    if Path(name).exists():
        return name
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=name, revision=revision, allow_patterns=_FILES)
    except Exception as err:  # offline, unknown repo, bad revision: one clear message
        raise load_error(name, err) from None


class XGenMMBackbone(Backbone):
    """xGen-MM (``Salesforce/xgen-mm-phi3-mini-instruct-interleave-r-v1.5``) as a query / gallery embedder.

    Args:
        model_name_or_path: local checkpoint folder (config.json, safetensors, tokenizer files), or a hub name
            (e.g. ``Salesforce/xgen-mm-phi3-mini-instruct-interleave-r-v1.5``) whose weights, config and
            tokenizer files are downloaded once (never its remote code, which is not needed).
        prompts: prompt preset and overrides (default: FiRE's templates).
        pooling: ``"eos_block"`` (mean over the appended EOS tokens, FiRE) or ``"last_token"``.
        eos_block_size: how many EOS tokens are appended and pooled (FiRE: 5).
        eos_token: the appended token (FiRE on Phi-3: ``<|end|>``).
        lora: LoRA settings (default targets: Phi-3's qkv_proj, o_proj, gate_up_proj, down_proj);
            ``None`` keeps the whole model frozen.
        dtype: weight dtype.
        anyres: tile images into anyres crops (the model's setting) or use only the squashed 384 view.
        make_tiny_if_missing: if ``model_name_or_path`` does not exist, build the tiny random checkpoint there.
        revision: hub revision (branch, tag or commit) when ``model_name_or_path`` is a hub name.
        gradient_checkpointing: recompute the language model's activations in backward (saves memory
            when training; works with LoRA).
        max_text_tokens: the most tokens of user text (modification, caption) in a prompt; longer texts
            are cut to it with a warning (the template, image tokens and EOS block are never cut). ``None``:
            no limit. Default 512 (FiRE's). A prompt longer than the language model's
            ``max_position_embeddings`` (image tokens spliced in) is an error, and so is a limit above them.
        release_compatible: reproduce FiRE's public release (iLearn-Lab/SIGIR25-FIRE) embedding function
            exactly: RGB conversion and short edge <= 380 before pre-processing, its prompts with
            ``" <|end|>"`` x 5 (spaces included), left padding to its length with positions counted from
            the padded row's first column (no position ids), eager attention in the decoder, and the mean
            of the LAST 10 positions (padding included when a text is shorter).
            Default ``False``: the paper's rule, which the release gets wrong (docs/fire.md, "What differs from the release"):
            we append the ``<|end|>`` block without spaces, pool exactly its ``eos_block_size`` positions,
            and count positions on real tokens, so padding never changes an embedding. Use it to compare
            with numbers or adapters from the release; it is part of ``fingerprint()``.

    Example:
        >>> from cir_lightning.backbones import LoRA, XGenMMBackbone
        >>> import tempfile
        >>> from PIL import Image
        >>> bb = XGenMMBackbone(tempfile.mkdtemp() + "/tiny", make_tiny_if_missing=True, lora=LoRA(r=2, alpha=4))
        >>> q = bb.encode_query([Image.new("RGB", (60, 30))], ["make it red"])
        >>> q.shape, round(float(q.norm()), 4)
        (torch.Size([1, 64]), 1.0)
    """

    def __init__(
        self,
        model_name_or_path: str,
        prompts: Prompts | None = None,
        pooling: PoolingMethod = "eos_block",
        eos_block_size: int = 5,
        eos_token: str | None = "<|end|>",
        lora: LoRA | None = None,
        dtype: Dtype = "float32",
        anyres: bool = True,
        make_tiny_if_missing: bool = False,
        revision: str | None = None,
        gradient_checkpointing: bool = False,
        max_text_tokens: int | None = 512,
        release_compatible: bool = False,
    ) -> None:
        super().__init__()
        self.model_name_or_path = str(path_option("model_name_or_path", model_name_or_path))  # "" is not `.`
        non_negative_int("eos_block_size", eos_block_size)
        positive_int("max_text_tokens", max_text_tokens, optional=True)
        if pooling == "eos_block" and eos_block_size < 1:
            raise CIRConfigError("`pooling: eos_block` needs `eos_block_size` >= 1")
        self.pooling, self.eos_block_size, self.dtype_name = pooling, eos_block_size, dtype
        if make_tiny_if_missing:
            build_tiny_if_missing(self.model_name_or_path, "xGen-MM", make_tiny_xgenmm)
        self.revision = revision
        folder = _local_folder(self.model_name_or_path, revision)
        check_readable(folder)  # one line naming an unreadable, missing or dangling file
        model = load_xgenmm(folder, DTYPES[dtype])
        self.release_compatible = bool(release_compatible)
        if self.release_compatible:  # the release's Phi-3 (transformers 4.44) has eager attention only, and
            # its 10-position mean takes in the padded rows of short texts, which sdpa computes differently
            model.get_decoder().config._attn_implementation = "eager"
        self.base_digest = checkpoint_digest(folder)  # the files just loaded (a hub snapshot's blob names)
        config = model.xgenmm_config
        self.max_positions = config.text.get("max_position_embeddings")
        check_text_limit(max_text_tokens, self.max_positions, self.model_name_or_path)
        processor = XGenMMProcessor.from_pretrained(folder, config, anyres)
        self.anyres_off = config.anyres and not anyres  # only the squashed view of an anyres model: other embeddings
        if processor.image_token_id != config.initial_tokenizer_len:
            raise CIRModelError(f"`<image>` is token {processor.image_token_id} in the tokenizer of `{folder}`, "
                                f"but the model reads it from additional row 0 = id {config.initial_tokenizer_len}")
        self.image_token_id = processor.image_token_id
        target = lora_target_regex(model, "phi3", lora.target_modules) if lora is not None else None
        self._prepare(model, lora, target, gradient_checkpointing, checkpointed=model.get_decoder())
        collator = ReleaseCollator if self.release_compatible else MLLMCollator
        self.collator = collator(processor, (prompts or Prompts()).resolve(), eos_token, eos_block_size,
                                max_text_tokens, self.max_positions)

    def _hidden(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Decoder hidden states over the spliced, left-padded sequence, and its mask."""
        model = self.base_model
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        layout = model.layout(inputs, self.image_token_id)  # the batch's numbers read once, before any work
        if not self.release_compatible:  # each <image> becomes its crops' tokens: the spliced rows must fit
            check_positions(torch.tensor(layout.lengths), self.max_positions, self.collator.max_text_tokens)
        images = model.encode_images(inputs["pixel_values"], layout) if "pixel_values" in inputs else None
        if self.release_compatible:  # the release's splice: its padding, zero vectors, positions from column 0
            per_image = [] if images is None else list(images.split(layout.tokens_per_image))
            embeds, mask, positions = release_splice(model.vlm.lang_model.model.embed_tokens, ids, mask, per_image,
                                                     self.image_token_id)
            check_positions(mask.sum(dim=1), self.max_positions, self.collator.max_text_tokens)
        else:
            embeds, mask = model.splice(ids, images, layout)
            positions = position_ids_from_mask(mask)
        out = model.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state, mask

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        hidden, mask = self._hidden(inputs)
        if self.release_compatible:  # the release: hidden_states[-1][:, -10:, :].mean(dim=1), padding and all
            return F.normalize(hidden[:, -RELEASE_LAST_N:, :].mean(dim=1).float(), dim=-1)
        return F.normalize(pool(hidden, mask, self.pooling, self.eos_block_size).float(), dim=-1)

    def caption_logits(self, inputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        hidden, _ = self._hidden(inputs)
        # Captions end every row and both batches are left-padded, so a label keeps its distance from the
        # row's end when the <image> tokens before it are spliced into 128-token groups.
        n = min(labels.shape[1], hidden.shape[1])
        aligned = labels.new_full(hidden.shape[:2], -100)
        aligned[:, -n:] = labels[:, -n:]
        return next_token_logits(hidden, aligned, self.base_model.vlm.lang_model.lm_head)

    @property
    def embedding_dim(self) -> int:
        return int(self.base_model.xgenmm_config.phi3_config().hidden_size)

    def fingerprint(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "model": self.model_name_or_path, "revision": self.revision,
                "base_digest": self.base_digest, "max_text_tokens": self.collator.max_text_tokens,
                "dtype": self.dtype_name,
                "pooling": self.pooling, "eos_block_size": self.eos_block_size,
                "eos_token": self.collator.eos_token,
                "prompts": self.collator.prompts.fingerprint(),
                # only when set, so that default fingerprints (and the caches keyed by them) stay as they were
                **({"release_compatible": True} if self.release_compatible else {}),
                **({"anyres": False} if self.anyres_off else {})}
