"""The HF multimodal backbone on the tiny offline model: embeddings, padding, LoRA placement, adapters."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from cir_lightning.backbones import HFMultimodalBackbone, LoRA, Prompts, make_tiny_model
from cir_lightning.backbones.collate import MLLMCollator
from cir_lightning.errors import CIRConfigError, CIRFileError, CIRModelError

warnings.filterwarnings("ignore", category=FutureWarning)


def _images(n: int) -> list[Image.Image]:
    colours = ["red", "blue", "green", "white", "yellow"]
    return [Image.new("RGB", (32 + 8 * i, 32), colours[i % 5]) for i in range(n)]


def test_embeddings_are_normalised_and_distinct(backbone):
    q = backbone.encode_query(_images(3), ["make it red", "a much longer modification text here", "x"])
    g = backbone.encode_gallery(_images(3))
    t = backbone.encode_text(["a red circle", "blue"])
    assert not q.requires_grad  # the encode_* front door is inference only
    assert q.shape == (3, 64)
    assert g.shape == (3, 64)
    assert t.shape == (2, 64)
    for e in (q, g, t):
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(e)), atol=1e-5)
    assert not torch.allclose(q[0], q[1], atol=1e-3)


def test_left_and_right_padding_give_the_same_embeddings(backbone):
    collator = backbone.collator
    mods = ["short", "a considerably longer modification that needs padding"]
    left = collator.query_inputs(_images(2), mods)
    # build the right-padded version of the same batch by moving each row's padding to the end
    mask = left["attention_mask"]
    right = dict(left)
    right["input_ids"] = torch.stack([torch.cat([r[m.bool()], r[~m.bool()]]) for r, m in
                                      zip(left["input_ids"], mask, strict=True)])
    right["attention_mask"] = torch.stack([torch.cat([m[m.bool()], m[~m.bool()]]) for m in mask])
    assert not torch.equal(right["input_ids"], left["input_ids"])
    with torch.no_grad():
        a, b = backbone(left), backbone(right)
        alone = backbone({k: v[:1] if k != "pixel_values" else v[:1] for k, v in
                          collator.query_inputs(_images(1), mods[:1]).items()})
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[:1], alone, atol=1e-5)  # padding does not change the short row either


def test_prompt_ends_with_the_eos_block_and_pooling_reads_it(backbone):
    inputs = backbone.collator.gallery_inputs(_images(2))
    eos = backbone.collator.eos_id
    assert (inputs["input_ids"][:, -5:] == eos).all()
    assert (inputs["input_ids"][:, -6] != eos).all()


def test_lora_sits_on_the_language_model_only_and_base_is_frozen(backbone):
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n for n in trainable)
    assert all(".language_model." in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("vision_tower" in n for n, _ in backbone.named_modules() if "lora_" in n)


def test_lora_targets_that_do_not_exist_are_an_error(tiny_model_dir):
    with pytest.raises(CIRConfigError, match=r"\['qkv_proj'\] match no linear layer"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(target_modules=["q_proj", "qkv_proj"]))


def test_modules_to_save_trains_the_projector_too(tiny_model_dir):
    bb = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4, modules_to_save=["multi_modal_projector"]))
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert any("multi_modal_projector" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)
    # a misspelt name trained nothing extra, without a word
    with pytest.raises(CIRConfigError, match=r"`lora.modules_to_save` \['multi_modal_projektor'\] match no module"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4, modules_to_save=["multi_modal_projektor"]))


def test_no_lora_means_nothing_trains(tiny_model_dir):
    bb = HFMultimodalBackbone(str(tiny_model_dir), lora=None)
    assert not any(p.requires_grad for p in bb.parameters())
    with pytest.raises(CIRConfigError, match="no LoRA adapter"):
        bb.save_adapter("x")


def test_adapter_round_trips_through_peft_save_pretrained(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    backbone = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8)).eval()  # no LoRA dropout
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
        want = backbone.encode_gallery(_images(2))
    backbone.save_adapter(tmp_path / "adapter")
    fresh = HFMultimodalBackbone(str(tiny_model_dir), lora=None)
    base = AutoModelForImageTextToText.from_pretrained(str(tiny_model_dir))
    fresh.model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    fresh.lora = LoRA()
    fresh.eval()
    with torch.no_grad():
        got = fresh.encode_gallery(_images(2))
        untrained = HFMultimodalBackbone(str(tiny_model_dir), lora=None).eval().encode_gallery(_images(2))
    assert torch.allclose(want, got, atol=1e-5)
    assert not torch.allclose(want, untrained, atol=1e-3)


def test_missing_model_gives_a_clear_error(tmp_path):
    # a path (absolute, or ./ ../ ~) is never a hub name: gone is said so, not as a failed hub lookup
    with pytest.raises(CIRModelError, match="cannot load model .*no-such-model`: the folder does not exist"):
        HFMultimodalBackbone(str(tmp_path / "no-such-model"))


def test_bad_eos_configuration_is_reported(tiny_model_dir):
    with pytest.raises(CIRModelError, match="is not a token"):
        HFMultimodalBackbone(str(tiny_model_dir), eos_token="<|end|>")
    with pytest.raises(CIRConfigError, match="eos_block_size"):
        HFMultimodalBackbone(str(tiny_model_dir), eos_block_size=0)


def test_encode_is_deterministic_and_restores_the_training_mode(tiny_model_dir):
    bb = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8, dropout=0.5))
    bb.train()
    a, b = bb.encode_gallery(_images(2)), bb.encode_gallery(_images(2))
    assert torch.equal(a, b)  # no dropout in encode_*
    assert bb.training


def test_weights_digest_identifies_the_adapter_state(tiny_model_dir):
    a = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8))
    b = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8))
    with torch.no_grad():
        b.load_state_dict(a.state_dict())
    assert a.weights_digest() == b.weights_digest()
    with torch.no_grad():
        next(p for n, p in b.named_parameters() if "lora_B" in n).add_(1e-3)
    assert a.weights_digest() != b.weights_digest()


def test_pooling_ignores_non_finite_values_in_padding():
    from cir_lightning.backbones.pooling import pool

    hidden = torch.ones(1, 4, 2)
    hidden[0, 0] = float("nan")
    assert torch.equal(pool(hidden, torch.tensor([[0, 1, 1, 1]]), "eos_block", 2), torch.ones(1, 2))


def test_building_a_tiny_model_on_request_warns_loudly(tmp_path):
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        HFMultimodalBackbone(str(tmp_path / "org" / "name"), make_tiny_if_missing=True)


def test_prompt_presets_and_overrides(tiny_model_dir):
    bb = HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("fire", query="<image> then {modification}"))
    assert bb.collator.prompts.query == "<image> then {modification}"
    assert bb.collator.prompts.gallery == "Describe the image <image> ?"
    with pytest.raises(CIRConfigError, match="needs <image>"):
        Prompts("fire", gallery="no image here").resolve()
    with pytest.raises(CIRConfigError, match=r"`query` uses unknown field\(s\) \['caption'\]"):
        Prompts("fire", query="<image> {modification} {caption}").resolve()
    with pytest.raises(CIRConfigError, match="`gallery` is not a valid template"):
        Prompts("fire", gallery="<image> {").resolve()


def test_collator_is_small_and_picklable(backbone):
    import pickle

    blob = pickle.dumps(backbone.collator)
    assert isinstance(pickle.loads(blob), MLLMCollator)
    assert len(blob) < 2_000_000  # the processor only, never the model


def test_make_tiny_model_refuses_to_overwrite(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(CIRFileError, match=r"m` already exists; it is never overwritten unless asked .*`--overwrite`"):
        make_tiny_model(tmp_path / "m")
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"


def test_presets_carry_their_pooling_and_the_backbone_follows_them(tiny_model_dir):
    from cir_lightning.backbones.prompts import PRESETS

    assert {n for n, p in PRESETS.items() if p.pooling == "last_token"} >= {"e5v", "e5v_cirr", "vlm2vec_cirr", "bge_vl"}
    assert (PRESETS["fire"].pooling, PRESETS["fire"].eos_block_size) == ("eos_block", 5)
    assert 'Modify this image with "{modification}", desribe modified image' in PRESETS["e5v_cirr"].query
    bb = HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("e5v"))
    assert (bb.pooling, bb.eos_block_size) == ("last_token", 0)
    inputs = bb.collator.gallery_inputs([Image.new("RGB", (32, 32))])
    text = bb.collator.tokenizer.decode(inputs["input_ids"][0][inputs["attention_mask"][0].bool()])
    assert text.endswith("assistant<|end_header_id|>\n\n \n")  # nothing appended after the prompt
    explicit = HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("e5v"), pooling="eos_block", eos_block_size=2)
    assert (explicit.pooling, explicit.eos_block_size) == ("eos_block", 2)


def test_image_processors_run_on_pil_even_where_torchvision_would_be_picked(tiny_model_dir, monkeypatch):
    """transformers 5 picks its torchvision backend when torchvision is installed; its resize differs from
    PIL's, which every original (and golden) used: ``load_processor`` swaps in the PIL image processor."""
    from cir_lightning.backbones import processors

    loaded = processors.load_processor(str(tiny_model_dir))
    assert not processors.is_torchvision_backend(loaded.image_processor)
    sentinel = object()
    monkeypatch.setattr(processors, "is_torchvision_backend", lambda ip: ip is sentinel)
    loaded.image_processor = sentinel
    swapped = processors.with_pil_images(loaded, str(tiny_model_dir))
    assert type(swapped.image_processor).__name__.endswith("Pil")


def test_image_only_qwen_processors_of_one_class_are_one_type(tmp_path):
    """Without torchvision each Qwen2-VL processor is an image-only subclass, made once per processor class
    (``functools.cache``): two models loaded in one process get processors of the same type."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLProcessor

    from cir_lightning.backbones import make_tiny_model
    from cir_lightning.backbones.processors import image_only_qwen_processor

    folder = make_tiny_model(tmp_path / "qwen", family="qwen2_vl")
    made = [image_only_qwen_processor(Qwen2VLProcessor, AutoImageProcessor.from_pretrained(folder),
                                      AutoTokenizer.from_pretrained(folder)) for _ in range(2)]
    assert type(made[0]) is type(made[1])
    assert isinstance(made[0], Qwen2VLProcessor)
    assert made[0].to_dict()["processor_class"] == "Qwen2VLProcessor"


def test_images_handed_to_the_collator_convert_as_the_data_modules_decode(backbone, tmp_path):
    """One RGB conversion (``cir_lightning.pixels``) for decoded files and for images passed to ``encode_*``:
    a 16-bit image keeps its high byte (``convert("RGB")`` would clip it to white), a palette image with a
    transparency table is not changed, and values that cannot be mapped name the image."""
    import numpy as np

    from cir_lightning.data.images import load_image
    from cir_lightning.errors import CIRDataError

    deep = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16))
    deep.save(tmp_path / "deep.png")
    assert torch.equal(backbone.encode_gallery([deep]), backbone.encode_gallery([load_image(tmp_path / "deep.png")]))
    palette = Image.new("P", (8, 8))
    palette.info["transparency"] = bytes(range(256))
    backbone.encode_gallery([palette])
    assert isinstance(palette.info["transparency"], bytes)
    with pytest.raises(CIRDataError, match="image 1 of the batch is a 32-bit float image"):
        backbone.encode_gallery([palette, Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32))])
