"""A tiny random xGen-MM checkpoint folder with the published key layout, built offline in seconds.

Same names as the real checkpoint (``vlm.vision_encoder.*``, ``vlm.vision_tokenizer.*``,
``vlm.lang_model.*``), tiny sizes: 28-pixel crops of 2 x 2 SigLIP patches, 4 latents, hidden 32/64.
The tokenizer is a byte-level BPE trained here with the Phi-3 chat tokens, ``<pad>`` and, as the last
three ids, ``<image>``, ``<image placeholder>``, ``<|endofchunk|>`` (the decoupled rows).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from cir_lightning.backbones.tiny.folders import check_out_dir, save_atomically, seeded
from cir_lightning.backbones.tiny.tokenizer import byte_level_tokenizer, spellings
from cir_lightning.backbones.xgenmm.modeling import XGenMMConfig, XGenMMModel
from cir_lightning.backbones.xgenmm.processing import XGenMMImageProcessor, XGenMMProcessor

_SPECIAL = ["<unk>", "<s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>", "<pad>"]
_WORDS = """given the reference image but modify it with describe new a an of and to in is this make change
red green blue yellow white black circle square small large left right top bottom shape color""".split()
TINY_CROP = 28


def _tokenizer():
    corpus = spellings(_WORDS, capitalised_alone=False) + [". ? , : !"]
    tokenizer = byte_level_tokenizer(corpus * 8, _SPECIAL, 400, eos_token="<|endoftext|>", pad_token="<pad>")
    initial = len(tokenizer)
    tokenizer.add_tokens(["<image>", "<image placeholder>", "<|endofchunk|>"], special_tokens=True)
    return tokenizer, initial


def make_tiny_xgenmm(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a tiny random xGen-MM checkpoint folder (config, model.safetensors, tokenizer, preprocessor).

    Args:
        out_dir: folder to create (must not exist or be empty unless ``overwrite``).
        seed: seed of the random weights.
        overwrite: replace an existing folder's files.

    Example:
        >>> from cir_lightning.backbones.xgenmm import make_tiny_xgenmm
        >>> import tempfile
        >>> path = make_tiny_xgenmm(tempfile.mkdtemp() + "/tiny-xgenmm")
        >>> sorted(p.name for p in path.iterdir())[:3]
        ['config.json', 'model.safetensors', 'preprocessor_config.json']
    """
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    tokenizer, initial = _tokenizer()
    c = TINY_CROP
    grids = [[c, 2 * c], [2 * c, c], [2 * c, 2 * c], [3 * c, c], [c, 3 * c]]
    ids = tokenizer.convert_tokens_to_ids
    raw = {
        "architectures": ["XGenMMModelForConditionalGeneration"], "model_type": "xgenmm", "torch_dtype": "float32",
        "text_config": {
            "model_type": "phi3", "initial_tokenizer_len": initial, "sliding_window": 2047,
            "vocab_size": initial + 4,  # like the real 32064 > 32012: a few unreachable base rows
            "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "max_position_embeddings": 512, "original_max_position_embeddings": 512,
            "bos_token_id": ids("<s>"), "eos_token_id": ids("<|endoftext|>"), "pad_token_id": ids("<|endoftext|>"),
        },
        "vision_encoder_config": {
            "model_type": "xgenmm_vision_encoder", "image_aspect_ratio": "anyres", "anyres_patch_sampling": True,
            "anyres_grids": grids,
            "siglip_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "patch_size": 14, "image_size": c},
        },
        "vision_tokenizer_config": {"model_type": "xgenmm_vision_tokenizer", "num_vis_tokens": 4, "depth": 2,
                                    "heads": 2, "dim_head": 8, "ff_mult": 2},
    }
    with seeded(seed):
        model = XGenMMModel(XGenMMConfig.from_dict(raw))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    processor = XGenMMProcessor(tokenizer, XGenMMImageProcessor(c, grids))

    def write(folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps(raw, indent=2))
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        processor.save_pretrained(folder)

    return save_atomically(out, write, overwrite)
