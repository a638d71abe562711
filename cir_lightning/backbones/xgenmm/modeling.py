"""xGen-MM (BLIP-3) as a plain ``nn.Module`` tree built from transformers-5 blocks, no remote code.

``XGenMMModel().state_dict()`` has exactly the names of the published checkpoint
(``Salesforce/xgen-mm-phi3-mini-instruct-interleave-r-v1.5``), so weights load 1:1:

- ``vlm.vision_encoder.*``: transformers' ``SiglipVisionModel`` (in transformers 5 it has no
  ``vision_model.`` infix, so the published names match as they are; the unused pooling ``head`` is
  kept for a strict load and never run).
- ``vlm.vision_tokenizer.*``: ``PerceiverResampler`` (128 latents, 6 layers, no media/frame positions).
- ``vlm.lang_model.model.*``: transformers' ``Phi3Model`` whose ``embed_tokens`` is a ``DecoupledEmbedding``
  (``weight`` + ``additional_embedding``); ``vlm.lang_model.lm_head.*``: a ``DecoupledLinear``
  (``weight``, ``bias``, ``additional_fc``). The head is kept for a strict load but never run for embeddings.

The forward embeds text, encodes every crop with SigLIP, resamples each crop group to 128 tokens,
replaces each ``<image>`` token by its image's tokens and runs the Phi-3 decoder (last hidden states).
Which crops, groups and positions go where is worked out on the host first (``layout.py``), so the forward
itself never reads a GPU tensor back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cir_lightning.backbones.xgenmm.layout import SpliceLayout, splice_layout

# SigLIP so400m-patch14-384: not in the published config.json (the original fetched it from the hub).
SIGLIP_SO400M: dict[str, Any] = {
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "patch_size": 14, "image_size": 384, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
    "num_channels": 3, "attention_dropout": 0.0,
}
ANYRES_GRIDS = [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]]


@dataclass
class XGenMMConfig:
    """What the published ``config.json`` says, with the remote config classes' defaults filled in.

    Args:
        text: keyword arguments of ``Phi3Config`` (published: four keys; the rest are Phi-3 defaults).
        siglip: keyword arguments of ``SiglipVisionConfig`` (published checkpoints: ``SIGLIP_SO400M``;
            our tiny checkpoints store theirs under ``vision_encoder_config.siglip_config``).
        anyres_grids: candidate (width, height) canvases in pixels for anyres tiling.
        anyres: ``image_aspect_ratio == "anyres"``.
        initial_tokenizer_len: ids below it use the base embedding rows, ids from it the additional ones.
        num_vis_tokens: perceiver latents (tokens per crop).
        perceiver_depth: perceiver layers.
        perceiver_heads: perceiver attention heads.
        perceiver_dim_head: perceiver head size.
        perceiver_ff_mult: perceiver feed-forward expansion.
        num_additional_tokens: rows of the additional embedding (``<image>``, ``<image placeholder>``,
            ``<|endofchunk|>``).

    Example:
        >>> cfg = XGenMMConfig.from_dict({"text_config": {"model_type": "phi3", "initial_tokenizer_len": 32012,
        ...                                               "sliding_window": 2047}})
        >>> cfg.initial_tokenizer_len, cfg.siglip["hidden_size"], cfg.phi3_config().hidden_size
        (32012, 1152, 3072)
    """

    text: dict[str, Any] = field(default_factory=dict)
    siglip: dict[str, Any] = field(default_factory=lambda: dict(SIGLIP_SO400M))
    anyres_grids: list[list[int]] = field(default_factory=lambda: [list(g) for g in ANYRES_GRIDS])
    anyres: bool = True
    initial_tokenizer_len: int = 32012
    num_vis_tokens: int = 128
    perceiver_depth: int = 6
    perceiver_heads: int = 16
    perceiver_dim_head: int = 96
    perceiver_ff_mult: int = 4
    num_additional_tokens: int = 3

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> XGenMMConfig:
        """Read a published (or tiny) ``config.json`` dictionary."""
        text = {k: v for k, v in dict(raw.get("text_config", {})).items()
                if k not in ("initial_tokenizer_len", "model_type", "torch_dtype", "dtype")}
        venc = dict(raw.get("vision_encoder_config", {}))
        vtok = dict(raw.get("vision_tokenizer_config", {}))
        siglip = dict(SIGLIP_SO400M)
        siglip.update(venc.get("siglip_config", {}))
        return cls(
            text=text, siglip=siglip,
            anyres_grids=[list(g) for g in venc.get("anyres_grids", ANYRES_GRIDS)],
            anyres=venc.get("image_aspect_ratio", "anyres") == "anyres",
            initial_tokenizer_len=int(raw.get("text_config", {}).get("initial_tokenizer_len", 32012)),
            num_vis_tokens=int(vtok.get("num_vis_tokens", 128)),
            perceiver_depth=int(vtok.get("depth", 6)), perceiver_heads=int(vtok.get("heads", 16)),
            perceiver_dim_head=int(vtok.get("dim_head", 96)), perceiver_ff_mult=int(vtok.get("ff_mult", 4)),
        )

    def phi3_config(self) -> Any:
        from transformers import Phi3Config

        return Phi3Config(**self.text)

    def siglip_config(self) -> Any:
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(**self.siglip, vision_use_head=True)


class DecoupledEmbedding(nn.Embedding):
    """An embedding whose ids from ``num_base`` on read ``additional_embedding`` (the xGen-MM extra tokens).

    Rows ``num_base ..`` of ``weight`` exist in the checkpoint but are unreachable, as in the original.

    Example:
        >>> emb = DecoupledEmbedding(6, 4, num_base=4, num_additional=2)
        >>> torch.equal(emb(torch.tensor([5]))[0], emb.additional_embedding.weight[1])
        True
    """

    def __init__(self, num_embeddings: int, dim: int, num_base: int, num_additional: int) -> None:
        super().__init__(num_embeddings, dim)
        self.num_base = num_base
        self.additional_embedding = nn.Embedding(num_additional, dim)

    def forward(self, input_ids: Tensor) -> Tensor:
        extra = input_ids >= self.num_base
        base = F.embedding(torch.where(extra, 0, input_ids), self.weight)
        more = self.additional_embedding(torch.where(extra, input_ids - self.num_base, 0))
        return torch.where(extra.unsqueeze(-1), more, base)


class DecoupledLinear(nn.Linear):
    """The LM head: ``linear(h)[..., :num_base]`` followed by ``additional_fc(h)`` (base + extra logits)."""

    def __init__(self, dim: int, vocab: int, num_base: int, num_additional: int) -> None:
        super().__init__(dim, vocab, bias=True)
        self.num_base = num_base
        self.additional_fc = nn.Linear(dim, num_additional)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.cat([super().forward(hidden)[..., : self.num_base], self.additional_fc(hidden)], -1)


class PerceiverAttention(nn.Module):
    """Latents attend to [media ; latents]; q pre-scaled, no biases (Flamingo / xGen-MM layout)."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.scale, self.heads = dim_head**-0.5, heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor, media_mask: Tensor) -> Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents) * self.scale
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.view(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        keep = torch.cat([media_mask.bool(), media_mask.new_ones(b, n, dtype=torch.bool)], dim=1)
        sim = (q @ k.transpose(-1, -2)).masked_fill(~keep[:, None, None, :], float("-inf"))
        attn = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


class PerceiverResampler(nn.Module):
    """Maps each crop's (tokens, dim) features to ``num_latents`` tokens of the language model's width.

    Example:
        >>> pr = PerceiverResampler(dim=8, dim_inner=6, num_latents=3, depth=1, dim_head=4, heads=2)
        >>> pr(torch.randn(2, 5, 8), torch.ones(2, 5)).shape
        torch.Size([2, 3, 6])
    """

    def __init__(self, dim: int, dim_inner: int, num_latents: int = 128, depth: int = 6, dim_head: int = 96,
                 heads: int = 16, ff_mult: int = 4) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads),
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                              nn.Linear(dim * ff_mult, dim, bias=False)),
            ]) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.projection = nn.Linear(dim, dim_inner)

    def forward(self, media: Tensor, media_mask: Tensor) -> Tensor:
        latents = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(media, latents, media_mask) + latents
            latents = ff(latents) + latents
        return self.projection(self.norm(latents))


class XGenMMLanguageModel(nn.Module):
    """Phi-3 decoder (``model``) with the decoupled embedding, and the decoupled LM head (``lm_head``)."""

    def __init__(self, config: XGenMMConfig) -> None:
        super().__init__()
        from transformers import Phi3Model

        phi3 = config.phi3_config()
        self.model = Phi3Model(phi3)
        self.model.embed_tokens = DecoupledEmbedding(phi3.vocab_size, phi3.hidden_size, config.initial_tokenizer_len,
                                                     config.num_additional_tokens)
        self.lm_head = DecoupledLinear(phi3.hidden_size, phi3.vocab_size, config.initial_tokenizer_len,
                                       config.num_additional_tokens)


def siglip_tower() -> type[nn.Module]:
    """The ``SiglipTower`` class (made once, on first use)."""
    if "SiglipTower" in globals():
        return globals()["SiglipTower"]
    from transformers import SiglipVisionModel

    class SiglipTower(SiglipVisionModel):
        """transformers' ``SiglipVisionModel`` whose forward returns the last hidden states (post-layernorm).

        Its attention-pooling ``head`` stays (the checkpoint has it, and the load is strict) but is not run:
        xGen-MM never uses its output, and it is about 1% of the tower's FLOPs. A subclass, not a function
        over its parts, so that hooks, FLOP counters and profilers see the tower as one module.
        """

        def forward(self, pixel_values: Tensor) -> Tensor:  # type: ignore[override]
            hidden = self.encoder(inputs_embeds=self.embeddings(pixel_values)).last_hidden_state
            return self.post_layernorm(hidden)

    SiglipTower.__module__, SiglipTower.__qualname__ = __name__, "SiglipTower"
    globals()["SiglipTower"] = SiglipTower
    return SiglipTower


def __getattr__(name: str) -> Any:
    """``SiglipTower`` is made on first use, so that importing this module does not import transformers'
    SigLIP (0.3 s); pickle finds the class here by its name."""
    if name == "SiglipTower":
        return siglip_tower()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class XGenMMVLM(nn.Module):
    """The ``vlm`` node of the published checkpoint."""

    def __init__(self, config: XGenMMConfig) -> None:
        super().__init__()
        self.vision_encoder = siglip_tower()(config.siglip_config())
        lm_dim = config.phi3_config().hidden_size
        self.vision_tokenizer = PerceiverResampler(
            config.siglip["hidden_size"], lm_dim, config.num_vis_tokens, config.perceiver_depth,
            config.perceiver_dim_head, config.perceiver_heads, config.perceiver_ff_mult)
        self.lang_model = XGenMMLanguageModel(config)


class XGenMMModel(nn.Module):
    """The whole model; ``state_dict()`` names equal the published checkpoint's.

    Args:
        config: the parsed configuration.

    Example:
        >>> from cir_lightning.backbones.xgenmm.loading import published_weight_shapes
        >>> with torch.device("meta"):
        ...     model = XGenMMModel(XGenMMConfig())
        >>> shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        >>> len(shapes), shapes == published_weight_shapes(XGenMMConfig())
        (718, True)
    """

    def __init__(self, config: XGenMMConfig) -> None:
        super().__init__()
        self.xgenmm_config = config
        self.vlm = XGenMMVLM(config)
        self.crop_size = int(config.siglip["image_size"])
        self.side = self.crop_size // int(config.siglip["patch_size"])

    def get_decoder(self) -> nn.Module:
        """The Phi-3 decoder (where LoRA goes)."""
        return self.vlm.lang_model.model

    def layout(self, inputs: Mapping[str, Tensor], image_token_id: int) -> SpliceLayout:
        """The batch's ``SpliceLayout`` on the inputs' device (one read of its numbers to the host)."""
        pixels = inputs.get("pixel_values")
        config = self.xgenmm_config
        layout = splice_layout(inputs["input_ids"], inputs["attention_mask"], inputs.get("image_num_crops"),
                               inputs.get("image_sizes"), max_crops=0 if pixels is None else pixels.shape[1],
                               image_token_id=image_token_id, num_vis_tokens=config.num_vis_tokens, side=self.side,
                               crop_size=self.crop_size, grids=config.anyres_grids)
        return layout.to(inputs["input_ids"].device)

    def encode_images(self, pixel_values: Tensor, layout: SpliceLayout) -> Tensor:
        """Visual tokens of every image, (all groups * num_vis_tokens, lm_dim): image by image, base view first.

        Args:
            pixel_values: (images, max_crops, 3, S, S); crops past each image's count are padding.
            layout: the batch's layout (``layout``): which crops are real and how they are grouped.
        """
        crops = pixel_values.flatten(0, 1)[layout.crop_index]
        vision = self.vlm.vision_encoder
        grad = any(p.requires_grad for p in vision.parameters())
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            feats = vision(crops.to(vision.dtype))
        groups = feats.flatten(0, 1)[layout.group_index]
        resampler = self.vlm.vision_tokenizer
        return resampler(groups.to(resampler.latents.dtype), layout.media_mask).flatten(0, 1)

    def splice(self, input_ids: Tensor, image_tokens: Tensor | None, layout: SpliceLayout) -> tuple[Tensor, Tensor]:
        """Every ``<image>`` replaced by its image's tokens; returns left-padded embeddings and mask.

        Padding in the input is dropped first, so left- and right-padded batches give identical outputs.
        Images are taken in reading order over the batch (row 0's images first). One gather, which copies
        values exactly (the layout says where each position comes from).
        """
        embeds = self.vlm.lang_model.model.embed_tokens(input_ids)
        parts = [embeds.flatten(0, 1)]
        if image_tokens is not None:
            parts.append(image_tokens.to(embeds.dtype))
        parts.append(embeds.new_zeros(1, embeds.shape[-1]))
        return torch.cat(parts)[layout.splice_index], layout.splice_mask
