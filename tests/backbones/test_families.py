"""HFMultimodalBackbone on tiny offline checkpoints of each family: LLaVA-1.5, Idefics3 (SmolVLM),
Qwen2-VL, Qwen2.5-VL and PaliGemma; and the Qwen2-VL presets (LamRA, GME)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image

from cir_lightning.backbones import HFMultimodalBackbone, LoRA, Prompts, make_tiny_model
from cir_lightning.errors import CIRConfigError, CIRModelError

warnings.filterwarnings("ignore", category=FutureWarning)

# family -> (prompt preset to test with, LM projections LoRA must adapt by default)
_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FAMILIES = {
    "llava": ("fire", _ALL),
    "idefics3": ("fire", _ALL),
    "qwen2_vl": ("gme", _ALL),
    "qwen2_5_vl": ("gme", _ALL),
    # PaliGemma's processor puts the image first and appends "\n": a last-token preset without EOS block
    "paligemma": ("vlm2vec_cirr", _ALL),
}


def _images(n: int) -> list[Image.Image]:
    colours = ["red", "blue", "green", "white", "yellow"]
    return [Image.new("RGB", (32 + 8 * i, 32), colours[i % 5]) for i in range(n)]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_dir(request, tmp_path_factory):
    return request.param, make_tiny_model(tmp_path_factory.mktemp(request.param) / "tiny", family=request.param)


def _backbone(path, preset: str, **kwargs) -> HFMultimodalBackbone:
    return HFMultimodalBackbone(str(path), prompts=Prompts(preset), **kwargs)


def _right_padded(left: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mask = left["attention_mask"].bool()
    right = dict(left)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if key in left:
            right[key] = torch.stack([torch.cat([r[m], r[~m]]) for r, m in zip(left[key], mask, strict=True)])
    assert not torch.equal(right["input_ids"], left["input_ids"])
    return right


def test_family_embeds_pads_and_adapts_the_language_model_only(family_dir, tmp_path):
    from peft import PeftModel

    family, path = family_dir
    preset, targets = FAMILIES[family]
    # PaliGemma under SDPA: a left-padded row differs from the same row alone by ~5e-3 (eager: exact)
    kwargs = {"attn_implementation": "eager"} if family == "paligemma" else {}
    bb = _backbone(path, preset, lora=LoRA(r=4, alpha=8), **kwargs).eval()  # the LM type's default targets
    dim = bb.base_model.config.get_text_config().hidden_size
    # LoRA: only LoRA weights train, all inside the language model, on the default projections
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    decoder = bb.base_model.get_decoder()
    lora_names = {n for n, m in bb.base_model.named_modules() if "lora_A" in n}
    assert trainable
    assert all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == set(targets)
    assert all(any(m is decoder for m in _parents(bb.base_model, n)) for n in lora_names)
    with torch.no_grad():
        for name, p in bb.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    # queries, gallery and texts embed to distinct unit vectors
    mods = ["short", "a considerably longer modification that needs padding"]
    q = bb.encode_query(_images(2), mods)
    g = bb.encode_gallery(_images(3))
    t = bb.encode_text(["a red circle", "blue square on the left"])
    assert (q.shape, g.shape, t.shape) == ((2, dim), (3, dim), (2, dim))
    for e in (q, g, t):
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(e)), atol=1e-5)
    assert not torch.allclose(q[0], q[1], atol=1e-3)
    # left and right padding agree, and a row alone equals the row in a padded batch
    left = bb.collator.query_inputs(_images(2), mods)
    with torch.no_grad():
        a, b = bb(left), bb(_right_padded(left))
        alone = bb(bb.collator.query_inputs(_images(1), mods[:1]))
        texts = bb.collator.text_inputs(["x", "a much longer caption of the target picture"])
        ta, tb = bb(texts), bb(_right_padded(texts))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[:1], alone, atol=1e-5)
    assert torch.allclose(ta, tb, atol=1e-5)
    # the adapter round-trips through peft's save_pretrained
    bb.save_adapter(tmp_path / "adapter")
    fresh = _backbone(path, preset, lora=None, **kwargs).eval()
    untrained = fresh.encode_gallery(_images(3))
    fresh.model = PeftModel.from_pretrained(fresh.model, str(tmp_path / "adapter"))
    fresh.lora = LoRA()
    assert torch.allclose(fresh.eval().encode_gallery(_images(3)), g, atol=1e-5)
    assert not torch.allclose(untrained, g, atol=1e-3)


def _parents(root, name: str):
    module = root
    for part in name.split("."):
        module = getattr(module, part)
        yield module


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("qwen") / "tiny", family="qwen2_vl")


def test_qwen2_vl_uses_its_own_3d_positions(qwen_dir):
    # a preset without `text_positions` (GME's and LamRA's own code run 1-D positions: test_golden_*.py)
    bb = _backbone(qwen_dir, "short").eval()
    inputs = bb.collator.gallery_inputs(_images(2))
    assert {"image_grid_thw", "mm_token_type_ids"} <= set(inputs)
    body = bb.base_model.model
    positions, _ = body.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                       image_grid_thw=inputs["image_grid_thw"],
                                       attention_mask=inputs["attention_mask"])
    assert positions.shape[0] == 3  # temporal, height, width
    # 1-D positions would give other embeddings: the backbone must not pass them for image rows
    with torch.no_grad():
        ours = bb(inputs)
        from cir_lightning.backbones.pooling import position_ids_from_mask

        flat = body(**inputs, position_ids=position_ids_from_mask(inputs["attention_mask"]), use_cache=False)
    assert not torch.allclose(ours, torch.nn.functional.normalize(flat.last_hidden_state[:, -1]), atol=1e-4)


def test_qwen2_vl_prompts_keep_the_vision_delimiters_around_the_expanded_image(qwen_dir):
    bb = _backbone(qwen_dir, "gme")
    inputs = bb.collator.gallery_inputs(_images(1))
    text = bb.collator.tokenizer.decode(inputs["input_ids"][0])
    grid = inputs["image_grid_thw"][0]
    pads = "<|image_pad|>" * int(grid.prod() // 4)
    assert f"<|vision_start|>{pads}<|vision_end|>" in text
    assert text.endswith("<|im_start|>assistant\n<|endoftext|>")


def test_lamra_pools_the_token_before_emb(qwen_dir):
    bb = _backbone(qwen_dir, "lamra").eval()
    assert (bb.pooling, bb.eos_block_size) == ("before_marker", 0)
    tok = bb.collator.tokenizer
    left = bb.collator.query_inputs(_images(2), ["red", "a much longer modification text, with more words"])
    mask = left["attention_mask"]
    emb = tok.convert_tokens_to_ids("<emb>")
    with torch.no_grad():
        # LamRA's 1-D positions (its forward calls the language model without M-RoPE's index)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = bb.base_model.model(**left, position_ids=positions, use_cache=False).last_hidden_state
        got = bb(left)
        right = bb(_right_padded(left))
    for row in range(2):
        first = int(((left["input_ids"][row] == emb) & mask[row].bool()).nonzero()[0])
        assert tok.decode(left["input_ids"][row, first - 1:first + 2]) == "\n<emb>."
        want = torch.nn.functional.normalize(hidden[row, first - 1], dim=-1)
        assert torch.allclose(got[row], want, atol=1e-5)
    assert torch.allclose(got, right, atol=1e-5)
    t = bb.encode_text(["a dog"])
    assert t.shape == (1, 64)


def test_gme_reads_the_last_real_token(qwen_dir):
    bb = _backbone(qwen_dir, "gme").eval()
    assert (bb.pooling, bb.eos_block_size) == ("last_token", 0)
    inputs = bb.collator.query_inputs(_images(2), ["red", "much longer modification text"])
    assert (inputs["input_ids"][:, -1] == bb.collator.tokenizer.convert_tokens_to_ids("<|endoftext|>")).all()
    text = bb.collator.tokenizer.decode(inputs["input_ids"][0][inputs["attention_mask"][0].bool()])
    assert text.startswith("<|im_start|>system\nRetrieve a day-to-day image that aligns with the modification")


def test_presets_lamra_and_gme_are_published_templates():
    from cir_lightning.backbones.prompts import PRESETS

    lamra = PRESETS["lamra"]
    assert "I'm looking for a similar everyday image with the described changes. {modification}\n" in lamra.query
    assert lamra.query.endswith("<|im_start|>assistant\n<emb>.<|im_end|>\n<|im_start|>assistant\n")
    assert "<|vision_start|><image><|vision_end|>\nSummarize above image in one word: " in lamra.gallery
    assert "{text}\nSummarize above sentence in one word: <|im_end|>" in lamra.text
    assert (lamra.pooling, lamra.marker) == ("before_marker", "<emb>")
    assert PRESETS["gme"].gallery == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                      "<|vision_start|><image><|vision_end|><|im_end|>\n<|im_start|>assistant\n"
                                      "<|endoftext|>")
    with pytest.raises(CIRConfigError, match="lacks the marker '<emb>'"):
        Prompts("lamra", gallery="<image>").resolve()


def test_marker_missing_from_the_tokenizer_is_reported(tiny_model_dir):
    with pytest.raises(CIRModelError, match="marker '<emb>' is not a token"):
        _backbone(tiny_model_dir, "lamra")


def test_qwen2_vl_folder_names_the_ordinary_processor_class(qwen_dir):
    config = json.loads((qwen_dir / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2VLProcessor"


def test_unknown_family_is_an_error(tmp_path):
    with pytest.raises(CIRConfigError, match="unknown tiny model `family`"):
        make_tiny_model(tmp_path / "x", family="nope")  # type: ignore[arg-type]
