"""A Hugging Face multimodal LLM as a retrieval backbone (LLaVA-NeXT, LLaVA and kin).

Loads ``AutoModelForImageTextToText`` + ``AutoProcessor`` from a hub name or a local folder, freezes it,
adds LoRA on the language model (peft), and embeds by running the multimodal model WITHOUT its LM head:
last-layer hidden states, pooled over the appended EOS block (or the last token), L2-normalised.
Positions are computed from the attention mask, so left and right padding give the same embeddings;
models with multimodal RoPE (Qwen2-VL, Qwen2.5-VL) compute their own 3-D positions from the mask.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    load_checkpoint,
    next_token_logits,
)
from cir_lightning.backbones.collate import MLLMCollator
from cir_lightning.backbones.identity import checkpoint_digest
from cir_lightning.backbones.lora import LoRA, lora_target_regex
from cir_lightning.backbones.pooling import PoolingMethod, pool, position_ids_from_mask
from cir_lightning.backbones.processors import complete_legacy_processor, load_processor
from cir_lightning.backbones.prompts import ADDED_FIELDS, Prompts
from cir_lightning.backbones.tiny import make_tiny_model
from cir_lightning.checks import non_negative_int, positive_int
from cir_lightning.errors import CIRConfigError, CIRModelError
from cir_lightning.paths import path_option


class HFMultimodalBackbone(Backbone):
    """A multimodal LLM from ``transformers`` turned into a query / gallery embedder.

    Args:
        model_name_or_path: hub name (e.g. ``royokong/e5-v``) or local checkpoint folder.
        prompts: prompt preset and overrides (default: FiRE's templates).
        pooling: ``"eos_block"`` (mean over the appended EOS tokens, FiRE), ``"last_token"`` or
            ``"before_marker"`` (the token before the preset's marker, LamRA); default: the prompt preset's
            (``eos_block`` for ``fire``, ``last_token`` for ``e5v``, ``vlm2vec_*``, ``gme``, ...).
        eos_block_size: how many EOS tokens are appended and pooled (FiRE: 5; 0 appends none); default:
            the prompt preset's.
        eos_token: the appended token (default: the tokenizer's EOS; FiRE on Phi-3 uses ``<|end|>``).
        lora: LoRA settings; ``None`` keeps the whole model frozen (zero-shot evaluation).
        dtype: weight dtype of the loaded model.
        attn_implementation: attention kernel passed to ``from_pretrained`` ("sdpa", "eager", ...).
        trust_remote_code: allow custom model code from the checkpoint (off unless you ask for it).
        revision: hub revision (branch, tag or commit) to load.
        make_tiny_if_missing: if ``model_name_or_path`` does not exist, build the tiny offline model
            there first (for demos and tests; see ``cir_lightning.backbones.tiny``).
        gradient_checkpointing: recompute the language model's activations in backward (saves memory
            when training; works with LoRA).
        max_text_tokens: the most tokens of user text (modification, caption) in a prompt; longer texts
            are cut to it with a warning (the template, image tokens and EOS block are never cut). ``None``:
            no limit. Default 512 (FiRE's). A prompt longer than the language model's
            ``max_position_embeddings`` is an error, and so is a limit above them.
        legacy_llava_next: reproduce transformers 4.41.2's LLaVA-NeXT, with its two bugs (non-square
            anyres grids laid out transposed, odd padding one pixel short; see
            ``cir_lightning.backbones.legacy_llava_next``): E5-V's published numbers were made with it. Off by
            default (transformers' fixed behaviour); refused on other model types.

    Example:
        >>> from cir_lightning.backbones import HFMultimodalBackbone
        >>> import tempfile
        >>> from PIL import Image
        >>> bb = HFMultimodalBackbone(tempfile.mkdtemp() + "/tiny", make_tiny_if_missing=True,
        ...                           lora=LoRA(r=4, alpha=8))
        >>> q = bb.encode_query([Image.new("RGB", (32, 32))], ["make it red"])
        >>> q.shape, round(float(q.norm()), 4)
        (torch.Size([1, 64]), 1.0)
    """

    def __init__(
        self,
        model_name_or_path: str,
        prompts: Prompts | None = None,
        pooling: PoolingMethod | None = None,
        eos_block_size: int | None = None,
        eos_token: str | None = None,
        lora: LoRA | None = None,
        dtype: Dtype = "float32",
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        revision: str | None = None,
        make_tiny_if_missing: bool = False,
        gradient_checkpointing: bool = False,
        max_text_tokens: int | None = 512,
        legacy_llava_next: bool = False,
    ) -> None:
        super().__init__()
        templates = (prompts or Prompts()).resolve()
        pooling = templates.pooling if pooling is None else pooling
        eos_block_size = templates.eos_block_size if eos_block_size is None else eos_block_size
        non_negative_int("eos_block_size", eos_block_size)
        positive_int("max_text_tokens", max_text_tokens, optional=True)
        if pooling == "eos_block" and eos_block_size < 1:
            raise CIRConfigError("`pooling: eos_block` needs `eos_block_size` >= 1")
        if pooling == "before_marker" and templates.marker is None:
            raise CIRConfigError("`pooling: before_marker` needs prompts with a `marker` token (e.g. preset `lamra`)")
        self.model_name_or_path = str(path_option("model_name_or_path", model_name_or_path))  # "" is not `.`
        self.revision = revision
        self.pooling = pooling
        self.eos_block_size = eos_block_size
        if make_tiny_if_missing:
            build_tiny_if_missing(self.model_name_or_path, "model", make_tiny_model)
        processor, model = self._load(dtype, attn_implementation, trust_remote_code)
        self.legacy_llava_next = bool(legacy_llava_next)
        if self.legacy_llava_next:
            from cir_lightning.backbones.legacy_llava_next import use_legacy_llava_next

            use_legacy_llava_next(model, processor, self.model_name_or_path)
        self.base_digest = checkpoint_digest(self.model_name_or_path, revision)  # the files just loaded
        max_positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        check_text_limit(max_text_tokens, max_positions, self.model_name_or_path)
        self.text_model_type = model.config.get_text_config().model_type
        target = lora_target_regex(model, self.text_model_type, lora.target_modules) if lora is not None else None
        self._prepare(model, lora, target, gradient_checkpointing)
        self.collator = MLLMCollator(processor, templates, eos_token, eos_block_size, max_text_tokens, max_positions)
        # multimodal RoPE: the model derives 3-D positions from input_ids, image_grid_thw and the mask,
        # unless the prompts ask for 1-D positions (LamRA)
        body = getattr(self.base_model, "model", None)
        self.mrope = hasattr(body, "get_rope_index") and not templates.text_positions
        self.combine_raw = templates.combine_texts == "raw"

    def _load(self, dtype: str, attn_implementation: str | None, trust_remote_code: bool) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText

        name = self.model_name_or_path
        kwargs = {"revision": self.revision, "trust_remote_code": trust_remote_code}

        def load() -> tuple[Any, Any]:
            processor, model = load_processor(name, **kwargs), AutoModelForImageTextToText.from_pretrained(
                name, dtype=DTYPES[dtype], attn_implementation=attn_implementation, **kwargs)
            return complete_legacy_processor(processor, model), model

        return load_checkpoint(name, load)

    def _hidden(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Last-layer hidden states of the multimodal body (the LM head is not run)."""
        body = getattr(self.base_model, "model", None)
        if body is None:
            raise CIRModelError(f"{type(self.base_model).__name__} has no `.model` (multimodal body without "
                                "the LM head); this family is not supported by HFMultimodalBackbone")
        extra = {}
        if not (self.mrope and "image_grid_thw" in inputs):  # text-only M-RoPE rows take 1-D positions too
            extra["position_ids"] = position_ids_from_mask(inputs["attention_mask"])
        return body(**inputs, **extra, use_cache=False).last_hidden_state

    def forward(self, inputs: Mapping[str, Tensor], normalize: bool = True) -> Tensor:
        pooled = pool(self._hidden(inputs), inputs["attention_mask"], self.pooling, self.eos_block_size,
                      input_ids=inputs.get("input_ids"), marker_id=self.collator.marker_id).float()
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def caption_logits(self, inputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        logits, targets = next_token_logits(self._hidden(inputs), labels, self.base_model.get_output_embeddings())
        cap = getattr(self.base_model.config.get_text_config(), "final_logit_softcapping", None)
        if cap:  # Gemma-2 language models (PaliGemma 2) cap their logits, as the model's own forward does
            logits = torch.tanh(logits / cap) * cap
        return logits, targets

    @property
    def embedding_dim(self) -> int:
        return int(self.base_model.config.get_text_config().hidden_size)

    def fingerprint(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "model": self.model_name_or_path, "revision": self.revision,
                "base_digest": self.base_digest, "max_text_tokens": self.collator.max_text_tokens, **self.dtype_key(),
                "pooling": self.pooling, "eos_block_size": self.eos_block_size,
                # no `marker` key unless set: fingerprints (and caches) of marker-less prompts stay as they were
                "prompts": self.collator.prompts.fingerprint(("marker", *ADDED_FIELDS)),
                # the appended token, when not the tokenizer's EOS (the default: its caches keep their keys)
                **({"eos_token": self.collator.eos_token}
                   if self.collator.eos_token != self.collator.tokenizer.eos_token else {}),
                # only when on: the keys (and caches) of the default stay as they were
                **({"legacy_llava_next": True} if self.legacy_llava_next else {})}

