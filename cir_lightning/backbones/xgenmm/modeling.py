"""xGen-MM (BLIP-3) as a plain ``nn.Module`` tree built from transformers-5 blocks, no remote code.

``XGenMMModel().state_dict()`` has exactly the names of the published checkpoint
(``Salesforce/xgen-mm-phi3-mini-instruct-interleave-r-v1.5``), so weights load 1:1:

- ``vlm.vision_encoder.*``: transformers' ``SiglipVisionModel`` (in transformers 5 it has no
  ``vision_model.`` infix, so the published names match as they are; the unused pooling ``head`` is kept).
- ``vlm.vision_tokenizer.*``: ``PerceiverResampler`` (128 latents, 6 layers, no media/frame positions).
- ``vlm.lang_model.model.*``: transformers' ``Phi3Model`` whose ``embed_tokens`` is a ``DecoupledEmbedding``
  (``weight`` + ``additional_embedding``); ``vlm.lang_model.lm_head.*``: a ``DecoupledLinear``
  (``weight``, ``bias``, ``additional_fc``). The head is kept for a strict load but never run for embeddings.

The forward embeds text, encodes every crop with SigLIP, resamples each crop group to 128 tokens,
replaces each ``<image>`` token by its image's tokens and runs the Phi-3 decoder (last hidden states).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cir_lightning.errors import CIRModelError

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


class XGenMMVLM(nn.Module):
    """The ``vlm`` node of the published checkpoint."""

    def __init__(self, config: XGenMMConfig) -> None:
        super().__init__()
        from transformers import SiglipVisionModel

        self.vision_encoder = SiglipVisionModel(config.siglip_config())
        lm_dim = config.phi3_config().hidden_size
        self.vision_tokenizer = PerceiverResampler(
            config.siglip["hidden_size"], lm_dim, config.num_vis_tokens, config.perceiver_depth,
            config.perceiver_dim_head, config.perceiver_heads, config.perceiver_ff_mult)
        self.lang_model = XGenMMLanguageModel(config)


def select_best_resolution(size: tuple[int, int], grids: list[list[int]]) -> tuple[int, int]:
    """The (width, height) canvas of ``grids`` keeping most of an image of PIL ``size`` (w, h).

    Maximises ``min(int(w*s) * int(h*s), w*h)`` with ``s = min(W/w, H/h)``; ties: least wasted area.

    Example:
        >>> select_best_resolution((1000, 500), ANYRES_GRIDS)  # 2:1 landscape -> two crops side by side
        (768, 384)
        >>> select_best_resolution((300, 1000), ANYRES_GRIDS)
        (384, 1152)
    """
    w, h = size
    best, best_eff, best_waste = None, -1, float("inf")
    for gw, gh in grids:
        s = min(gw / w, gh / h)
        eff = min(int(w * s) * int(h * s), w * h)
        waste = gw * gh - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (gw, gh), eff, waste
    assert best is not None
    return best


def unpad_mask(size: tuple[int, int], rows: int, cols: int) -> Tensor:
    """(rows, cols) mask of the feature map that is image, not letterbox (``size`` is PIL (w, h)).

    Example:
        >>> unpad_mask((1000, 200), 4, 8).sum(1).tolist()  # very wide image: top and bottom rows are padding
        [0.0, 8.0, 8.0, 0.0]
    """
    w, h = size
    mask = torch.ones(rows, cols)
    if w / h > cols / rows:
        pad = (rows - int(h * (cols / w))) // 2
        mask[:pad], mask[rows - pad:] = 0, 0
    else:
        pad = (cols - int(w * (rows / h))) // 2
        mask[:, :pad], mask[:, cols - pad:] = 0, 0
    return mask


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

    def _groups(self, feats: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """One image's crop features (n, tokens, C) -> perceiver groups and their token masks."""
        ones = feats.new_ones(1, feats.shape[1])
        if feats.shape[0] == 1:
            return feats, ones
        gw, gh = select_best_resolution(size, self.xgenmm_config.anyres_grids)
        npw, nph = gw // self.crop_size, gh // self.crop_size
        if feats.shape[0] != 1 + npw * nph:
            raise CIRModelError(f"an image of size {size} has {feats.shape[0]} crops; its anyres grid "
                                f"{npw}x{nph} needs {1 + npw * nph}: processor and model grids differ")
        s, c = self.side, feats.shape[-1]
        grid = feats[1:].reshape(nph, npw, s, s, c).permute(4, 0, 2, 1, 3).reshape(c, nph * s, npw * s)
        mask = unpad_mask(size, nph * s, npw * s).to(feats)
        # The original regroups the full-width map into contiguous bands of s*s tokens (not the spatial
        # crops when npw > 1); the trained perceiver expects this grouping, so it is reproduced exactly.
        groups = grid.reshape(c, nph * npw, s * s).permute(1, 2, 0)
        return torch.cat([feats[:1], groups]), torch.cat([ones, mask.reshape(nph * npw, s * s)])

    def encode_images(self, pixel_values: Tensor, num_crops: Tensor, image_sizes: Tensor) -> list[Tensor]:
        """Visual tokens per image, (n_groups * num_vis_tokens, lm_dim), base view first.

        Args:
            pixel_values: (images, max_crops, 3, S, S); crops past ``num_crops`` are padding.
            num_crops: (images,) real crops per image.
            image_sizes: (images, 2) original (width, height).
        """
        counts = [int(n) for n in num_crops]
        crops = torch.cat([pixel_values[i, :n] for i, n in enumerate(counts)])
        vision = self.vlm.vision_encoder
        grad = any(p.requires_grad for p in vision.parameters())
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            feats = vision(crops.to(vision.dtype)).last_hidden_state
        groups, masks, sizes = [], [], []
        for f, wh in zip(feats.split(counts), image_sizes.tolist(), strict=True):
            g, m = self._groups(f, (int(wh[0]), int(wh[1])))
            groups.append(g)
            masks.append(m)
            sizes.append(len(g))
        resampler = self.vlm.vision_tokenizer
        dtype = resampler.latents.dtype
        tokens = resampler(torch.cat(groups).to(dtype), torch.cat(masks))
        return [t.flatten(0, 1) for t in tokens.split(sizes)]

    def splice(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: list[Tensor],
               image_token_id: int) -> tuple[Tensor, Tensor]:
        """Replace every ``<image>`` by its image's tokens; returns left-padded embeddings and mask.

        Padding in the input is dropped first, so left- and right-padded batches give identical outputs.
        Images are taken in reading order over the batch (row 0's images first).
        """
        embeds = self.vlm.lang_model.model.embed_tokens(input_ids)
        n_img = int((input_ids[attention_mask.bool()] == image_token_id).sum())
        if n_img != len(image_tokens):
            raise CIRModelError(f"the batch has {n_img} `<image>` token(s) but {len(image_tokens)} image(s)")
        rows, k = [], 0
        for ids, emb, mask in zip(input_ids, embeds, attention_mask.bool(), strict=True):
            ids, emb = ids[mask], emb[mask]
            parts, start = [], 0
            for pos in (ids == image_token_id).nonzero().flatten().tolist():
                parts += [emb[start:pos], image_tokens[k].to(emb.dtype)]
                k, start = k + 1, pos + 1
            rows.append(torch.cat([*parts, emb[start:]]))
        length = max(len(r) for r in rows)
        out = embeds.new_zeros(len(rows), length, embeds.shape[-1])
        new_mask = attention_mask.new_zeros(len(rows), length)
        for i, r in enumerate(rows):
            out[i, length - len(r):] = r
            new_mask[i, length - len(r):] = 1
        return out, new_mask
