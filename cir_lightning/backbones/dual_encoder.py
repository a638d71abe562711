"""A CLIP-style dual encoder (CLIPModel, SiglipModel) as a composed-image-retrieval backbone.

The query embeds the reference image with the vision tower and the modification text with the text
tower and fuses the two (BGE-VL-base / -large "score fusion"); gallery items are image embeddings and
text items (captions) text embeddings, all L2-normalised. BGE-VL-base and -large are CLIP checkpoints
(``model_type: clip``) whose weights load into a plain ``CLIPModel``, so no remote code is needed.

Padding: CLIP pools the first EOS token and uses absolute positions, SigLIP pools the last position and was
trained on text padded to a fixed length; both therefore need right padding, which the collator always
produces (SigLIP: to the maximum length, without an attention mask, as its processor does). A left-padded
batch is refused by ``forward`` rather than silently embedded wrongly.

Truncation: text longer than the text tower's maximum length (CLIP: 77 tokens, BOS and EOS included) is cut
to it keeping the final EOS, with a warning (``"warn"``, default), refused (``"error"``) or cut (``"silent"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor

from cir_lightning.backbones.base import DTYPES, Backbone, Dtype, build_tiny_if_missing, load_checkpoint
from cir_lightning.backbones.batches import SampleBatches
from cir_lightning.backbones.collate import as_rgb
from cir_lightning.backbones.identity import checkpoint_digest
from cir_lightning.backbones.lora import LoRA, Towers, tower_target_regex
from cir_lightning.backbones.processors import load_processor
from cir_lightning.backbones.tiny import make_tiny_dual_encoder
from cir_lightning.checks import positive_int
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRModelError
from cir_lightning.paths import path_option

Inputs = dict[str, Tensor]
Fusion = Literal["sum", "sum_raw", "image", "text"]
Truncation = Literal["warn", "error", "silent"]


@dataclass(frozen=True)
class DualEncoderFamily:
    """How one dual-encoder model type is fed and adapted (a registry entry, see ``DUAL_ENCODER_TYPES``).

    Args:
        pad_to_max_length: pad text to the model's maximum length (SigLIP's training setting).
        attention_mask: pass the text attention mask to the model.
        lora_targets: default LoRA target names inside each tower's encoder layers.

    Example:
        >>> from cir_lightning.backbones.dual_encoder import DUAL_ENCODER_TYPES, DualEncoderFamily
        >>> isinstance(DUAL_ENCODER_TYPES["siglip"], DualEncoderFamily), DUAL_ENCODER_TYPES["siglip"].attention_mask
        (True, False)
    """

    pad_to_max_length: bool
    attention_mask: bool
    lora_targets: tuple[str, ...]


_ATTN_MLP = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
DUAL_ENCODER_TYPES: dict[str, DualEncoderFamily] = {
    "clip": DualEncoderFamily(pad_to_max_length=False, attention_mask=True, lora_targets=_ATTN_MLP),
    "siglip": DualEncoderFamily(pad_to_max_length=True, attention_mask=False, lora_targets=_ATTN_MLP),
}
"""``model_type`` of a supported dual encoder -> how it is fed and adapted."""


class DualEncoderCollator(SampleBatches):
    """Turns images and texts into dual-encoder inputs, and samples into batches (runs in loader workers).

    Holds only the processor (picklable). Query inputs hold ``pixel_values`` and the modification's
    ``input_ids`` (+ ``attention_mask``); gallery inputs only ``pixel_values``; text inputs only the tokens.

    Args:
        processor: a Hugging Face ``CLIPProcessor`` / ``SiglipProcessor`` (image processor + tokenizer).
        family: the entry of ``DUAL_ENCODER_TYPES`` (padding and mask policy).
        max_length: the longest token sequence, special tokens included (CLIP: 77).
        query_template: how the modification becomes the query text; ``{modification}`` is replaced.
        text_template: how a caption becomes a text item; ``{text}`` is replaced.
        truncation: text longer than ``max_length``: ``"warn"`` (cut, warn once), ``"error"`` or ``"silent"``.

    Example:
        >>> from cir_lightning.backbones import DualEncoderCollator
        >>> import tempfile
        >>> from transformers import AutoProcessor
        >>> from cir_lightning.backbones.dual_encoder import DUAL_ENCODER_TYPES
        >>> from cir_lightning.backbones.tiny import make_tiny_dual_encoder
        >>> processor = AutoProcessor.from_pretrained(make_tiny_dual_encoder(tempfile.mkdtemp() + "/c"))
        >>> c = DualEncoderCollator(processor, DUAL_ENCODER_TYPES["clip"], max_length=77)
        >>> x = c.query_inputs([Image.new("RGB", (40, 32))], ["make it red"])
        >>> {k: tuple(v.shape) for k, v in x.items()}
        {'input_ids': (1, 5), 'attention_mask': (1, 5), 'pixel_values': (1, 3, 32, 32)}
    """

    def __init__(self, processor: Any, family: DualEncoderFamily, max_length: int,
                 query_template: str = "{modification}", text_template: str = "{text}",
                 truncation: Truncation = "warn") -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "right"
        self.family = family
        self.max_length = max_length
        self.query_template = query_template
        self.text_template = text_template
        self.truncation = truncation
        self._warned = False

    def _tokenize(self, texts: list[str]) -> Inputs:
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        too_long = [(t, n) for t, n in zip(texts, lengths, strict=True) if n > self.max_length]
        if too_long and self.truncation == "error":
            text, n = too_long[0]
            raise CIRDataError(f"text of {n} tokens is longer than the model's maximum of {self.max_length}: "
                               f"{text[:80]!r}; shorten it, or set `truncation: warn` to cut it")
        if too_long and self.truncation == "warn" and not self._warned:
            self._warned = True
            rank_zero_warn(f"{len(too_long)} text(s) longer than the model's maximum of {self.max_length} tokens "
                           f"were cut to it (e.g. {too_long[0][0][:60]!r}, {too_long[0][1]} tokens); set "
                           "`truncation` to 'error' to refuse them or 'silent' to hide this warning")
        padding = "max_length" if self.family.pad_to_max_length else "longest"
        out = self.tokenizer(texts, padding=padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        keep = ("input_ids", "attention_mask") if self.family.attention_mask else ("input_ids",)
        return {k: out[k] for k in keep}

    def _pixels(self, images: Sequence[Image.Image]) -> Tensor:
        # alpha dropped as BGE-VL (transformers 4) did; transformers 5 would composite it on white
        return self.processor.image_processor(images=as_rgb(images), return_tensors="pt")["pixel_values"]

    def query_inputs(self, images: Sequence[Image.Image], modifications: Sequence[str]) -> Inputs:
        """Inputs for reference images with modification texts."""
        if len(images) != len(modifications):
            raise CIRDataError(f"{len(images)} reference images but {len(modifications)} modifications")
        texts = [self.query_template.format(modification=m) for m in modifications]
        return {**self._tokenize(texts), "pixel_values": self._pixels(images)}

    def gallery_inputs(self, images: Sequence[Image.Image]) -> Inputs:
        """Inputs for gallery (or target) images."""
        return {"pixel_values": self._pixels(images)}

    def text_inputs(self, texts: Sequence[str]) -> Inputs:
        """Inputs for text-only items (e.g. target captions)."""
        return self._tokenize([self.text_template.format(text=t) for t in texts])


def _features(out: Any) -> Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, Tensor) else out.pooler_output


class DualEncoderBackbone(Backbone):
    """A CLIP / SigLIP dual encoder turned into a composed query / gallery / text embedder.

    Query: ``fusion="sum_raw"`` (default) is ``normalize(text + image)`` of the two towers' raw projected
    features, as BGE-VL-base / -large compute composed queries (FlagOpen/FlagEmbedding
    ``research/BGE_VL/modeling_MMRet_CLIP.py``: ``get_text_features + get_image_features``, normalised);
    ``"sum"`` is ``normalize(normalize(text) + normalize(image))`` (each tower weighted equally);
    ``"image"`` / ``"text"`` use one tower only (ablations). Gallery: ``normalize(image)``; text items:
    ``normalize(text)``.

    Args:
        model_name_or_path: hub name (``openai/clip-vit-large-patch14``, ``BAAI/BGE-VL-base``,
            ``google/siglip-base-patch16-224``) or local checkpoint folder.
        fusion: how the query's text and image embeddings are combined (see above).
        query_template: the query text; ``{modification}`` is replaced by the modification.
        text_template: the text of a text item; ``{text}`` is replaced by the caption.
        truncation: texts longer than the text tower's maximum: ``"warn"`` (cut, keep EOS, warn once),
            ``"error"`` or ``"silent"``.
        lora: LoRA settings (``target_modules`` are layer names inside the towers' encoder layers; ``None``
            takes q/k/v/out_proj and fc1/fc2); ``None`` keeps the whole model frozen.
        lora_towers: which towers get LoRA: ``"text"``, ``"vision"`` or ``"both"``.
        dtype: weight dtype of the loaded model.
        trust_remote_code: allow custom model code from the checkpoint (off unless you ask for it).
        revision: hub revision (branch, tag or commit) to load.
        make_tiny_if_missing: if ``model_name_or_path`` does not exist, build a tiny random CLIP there
            first (demos and tests; see ``cir_lightning.backbones.tiny``).
        gradient_checkpointing: recompute the towers' activations in backward (saves memory when
            training; works with LoRA).
        max_text_tokens: the longest text token sequence, special tokens included; longer texts are
            handled as ``truncation`` says. ``None`` (default): the text tower's maximum (CLIP: 77), which
            it may not exceed. BGE-VL's evaluation cuts query text at 75 (``data.layouts.bgevl.QUERY_MAX_TOKENS``).

    Example:
        >>> from cir_lightning.backbones import DualEncoderBackbone, LoRA
        >>> import tempfile
        >>> bb = DualEncoderBackbone(tempfile.mkdtemp() + "/tiny", make_tiny_if_missing=True,
        ...                          lora=LoRA(r=4, alpha=8))
        >>> q = bb.encode_query([Image.new("RGB", (32, 32))], ["make it red"])
        >>> q.shape, round(float(q.norm()), 4)
        (torch.Size([1, 32]), 1.0)
    """

    def __init__(
        self,
        model_name_or_path: str,
        fusion: Fusion = "sum_raw",
        query_template: str = "{modification}",
        text_template: str = "{text}",
        truncation: Truncation = "warn",
        lora: LoRA | None = None,
        lora_towers: Towers = "both",
        dtype: Dtype = "float32",
        trust_remote_code: bool = False,
        revision: str | None = None,
        make_tiny_if_missing: bool = False,
        gradient_checkpointing: bool = False,
        max_text_tokens: int | None = None,
    ) -> None:
        super().__init__()
        positive_int("max_text_tokens", max_text_tokens, optional=True)
        if "{modification}" not in query_template:
            raise CIRConfigError(f"`query_template` {query_template!r} has no `{{modification}}` placeholder")
        if "{text}" not in text_template:
            raise CIRConfigError(f"`text_template` {text_template!r} has no `{{text}}` placeholder")
        self.model_name_or_path = str(path_option("model_name_or_path", model_name_or_path))  # "" is not `.`
        self.revision = revision
        self.fusion = fusion
        if make_tiny_if_missing:
            build_tiny_if_missing(self.model_name_or_path, "CLIP", make_tiny_dual_encoder)
        processor, model = self._load(dtype, trust_remote_code)
        self.base_digest = checkpoint_digest(self.model_name_or_path, revision)  # the files just loaded
        self.model_type = model.config.model_type
        if self.model_type not in DUAL_ENCODER_TYPES:
            raise CIRModelError(f"`{self.model_name_or_path}` is a {self.model_type!r} model; DualEncoderBackbone "
                                f"supports {', '.join(sorted(DUAL_ENCODER_TYPES))} checkpoints")
        family = DUAL_ENCODER_TYPES[self.model_type]
        self.lora_towers = lora_towers
        target = None
        if lora is not None:
            target = tower_target_regex(model, lora_towers, lora.target_modules or list(family.lora_targets))
        self._prepare(model, lora, target, gradient_checkpointing)
        text_config = self.base_model.config.text_config
        max_length = min(text_config.max_position_embeddings,
                         getattr(processor.tokenizer, "model_max_length", None) or 10**9)
        if max_text_tokens is not None and max_text_tokens > max_length:
            raise CIRConfigError(f"`max_text_tokens` = {max_text_tokens} is more than the text tower of "
                                 f"`{self.model_name_or_path}` can read ({max_length} tokens); set it to at most "
                                 f"{max_length}, or leave it unset to use that maximum")
        max_length = max_text_tokens or max_length
        self.collator = DualEncoderCollator(processor, family, max_length, query_template, text_template,
                                            truncation)

    def _load(self, dtype: str, trust_remote_code: bool) -> tuple[Any, Any]:
        from transformers import AutoModel

        name = self.model_name_or_path
        kwargs = {"revision": self.revision, "trust_remote_code": trust_remote_code}

        def load() -> tuple[Any, Any]:
            return load_processor(name, **kwargs), AutoModel.from_pretrained(
                name, dtype=DTYPES[dtype], **kwargs)

        processor, model = load_checkpoint(name, load)
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise CIRModelError(f"the processor of `{name}` ({type(processor).__name__}) lacks a tokenizer or an "
                                "image processor; DualEncoderBackbone needs both")
        return processor, model

    def text_features(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """The text tower's projected features (not normalised)."""
        mask = inputs.get("attention_mask")
        if mask is not None and bool((mask[:, -1] > mask[:, 0]).any()):
            raise CIRModelError("left-padded text reached DualEncoderBackbone: CLIP / SigLIP need right padding "
                                "(DualEncoderCollator produces it; set `tokenizer.padding_side = 'right'`)")
        kwargs = {"attention_mask": mask} if mask is not None else {}
        return _features(self.base_model.get_text_features(input_ids=inputs["input_ids"], **kwargs)).float()

    def image_features(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """The vision tower's projected features (not normalised)."""
        pixels = inputs["pixel_values"].to(self.base_model.dtype)
        return _features(self.base_model.get_image_features(pixel_values=pixels)).float()

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        has_text, has_image = "input_ids" in inputs, "pixel_values" in inputs
        if not (has_text or has_image):
            raise CIRModelError(f"inputs hold neither `input_ids` nor `pixel_values` (keys: {sorted(inputs)})")
        if not has_image:
            return F.normalize(self.text_features(inputs), dim=-1)
        if not has_text or self.fusion == "image":
            return F.normalize(self.image_features(inputs), dim=-1)
        if self.fusion == "text":
            return F.normalize(self.text_features(inputs), dim=-1)
        text, image = self.text_features(inputs), self.image_features(inputs)
        if self.fusion == "sum":
            text, image = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
        return F.normalize(text + image, dim=-1)

    @property
    def embedding_dim(self) -> int:
        return int(self.base_model.config.projection_dim)

    def fingerprint(self) -> dict[str, Any]:
        c = self.collator
        return {"class": type(self).__name__, "model": self.model_name_or_path, "revision": self.revision,
                "base_digest": self.base_digest, "fusion": self.fusion, "query_template": c.query_template, "text_template": c.text_template,
                "max_length": c.max_length, **self.dtype_key()}
