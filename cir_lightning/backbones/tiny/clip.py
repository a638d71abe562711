"""Tiny, random-initialised CLIP and SigLIP dual encoders for tests and demos, built offline.

``make_tiny_dual_encoder`` writes an ordinary checkpoint folder (config, safetensors weights, a
``CLIPTokenizer`` and a PIL image processor at a small resolution) that loads back through
``AutoModel`` + ``AutoProcessor`` exactly like ``openai/clip-vit-base-patch32`` or
``google/siglip-base-patch16-224``. The tokenizer is CLIP's own pipeline over a vocabulary trained here
(``tiny.tokenizer.tiny_clip_tokenizer``); the SigLIP variant reuses it (real SigLIP uses a SentencePiece
one) padded to a fixed length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cir_lightning.backbones.tiny.folders import check_out_dir, seeded, write_checkpoint
from cir_lightning.backbones.tiny.tokenizer import CLIP_BOS, CLIP_EOS, tiny_clip_tokenizer
from cir_lightning.errors import CIRConfigError


def make_tiny_dual_encoder(out_dir: str | Path, family: Literal["clip", "siglip"] = "clip", seed: int = 0,
                           image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                           overwrite: bool = False) -> Path:
    """Build a tiny CLIP (or SigLIP) checkpoint folder at ``out_dir`` and return its path.

    Args:
        out_dir: folder to write; it must not exist or be empty unless ``overwrite`` is true.
        family: ``"clip"`` (CLIPModel, text length 77) or ``"siglip"`` (SiglipModel, text length 16).
        seed: seed of the random weights.
        image_size: side of the square images the vision tower sees, in pixels.
        patch_size: vision patch size.
        hidden: hidden size of both towers (also the projection size).
        overwrite: replace the files of an existing checkpoint folder.

    Example:
        >>> from cir_lightning.backbones.tiny import make_tiny_dual_encoder
        >>> import tempfile
        >>> from transformers import AutoModel
        >>> path = make_tiny_dual_encoder(tempfile.mkdtemp() + "/clip")
        >>> type(AutoModel.from_pretrained(path)).__name__
        'CLIPModel'
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, SiglipConfig, SiglipModel, SiglipProcessor
    from transformers.models.clip import CLIPImageProcessorPil
    from transformers.models.siglip import SiglipImageProcessorPil

    out = Path(out_dir)
    check_out_dir(out, overwrite)
    if image_size % patch_size:
        raise CIRConfigError(f"`image_size` {image_size} is not a multiple of `patch_size` {patch_size}")
    max_len = 77 if family == "clip" else 16
    tokenizer = tiny_clip_tokenizer(model_max_length=max_len)
    bos, eos = tokenizer.convert_tokens_to_ids(CLIP_BOS), tokenizer.convert_tokens_to_ids(CLIP_EOS)
    towers = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2,
              "num_attention_heads": 2}
    text = {**towers, "vocab_size": len(tokenizer), "max_position_embeddings": max_len,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}
    vision = {**towers, "image_size": image_size, "patch_size": patch_size}
    with seeded(seed):
        if family == "clip":
            config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)
            model = CLIPModel(config).eval()
            image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                    crop_size={"height": image_size, "width": image_size})
            processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        elif family == "siglip":
            config = SiglipConfig(text_config={**text, "projection_size": hidden}, vision_config=vision)
            model = SiglipModel(config).eval()
            image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
            processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        else:
            raise CIRConfigError(f"`family` must be 'clip' or 'siglip', not {family!r}")
    return write_checkpoint(out, model, processor, overwrite)
