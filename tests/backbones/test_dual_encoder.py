"""The CLIP / SigLIP dual-encoder backbone on tiny offline models: fusion, padding, LoRA, adapters, training."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cir_lightning.backbones.dual_encoder import DualEncoderBackbone
from cir_lightning.backbones.lora import LoRA
from cir_lightning.backbones.tiny import make_tiny_dual_encoder
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRModelError

warnings.filterwarnings("ignore", category=FutureWarning)
COLOURS = ["red", "blue", "green", "white", "yellow", "purple", "orange", "cyan"]


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (32 + 8 * i, 32), COLOURS[i % len(COLOURS)]) for i in range(n)]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_tiny_dual_encoder(tmp_path_factory.mktemp("dual") / "clip")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return make_tiny_dual_encoder(tmp_path_factory.mktemp("dual") / "siglip", family="siglip")


@pytest.fixture(scope="module")
def clip(clip_dir):
    return DualEncoderBackbone(str(clip_dir), lora=LoRA(r=4, alpha=8, dropout=0.0))


def test_tiny_checkpoints_load_back_offline(clip_dir, siglip_dir):
    from transformers import AutoModel, AutoProcessor

    for path, model, processor in [(clip_dir, "CLIPModel", "CLIPProcessor"),
                                   (siglip_dir, "SiglipModel", "SiglipProcessor")]:
        assert type(AutoModel.from_pretrained(path)).__name__ == model
        assert type(AutoProcessor.from_pretrained(path)).__name__ == processor


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_embeddings_are_normalised_with_the_right_shapes(family, clip, siglip_dir):
    bb = clip if family == "clip" else DualEncoderBackbone(str(siglip_dir))
    q = bb.encode_query(_images(3), ["make it red", "a much longer modification text here", "x"])
    g = bb.encode_gallery(_images(4))
    t = bb.encode_text(["a red circle", "blue"])
    assert (q.shape, g.shape, t.shape) == ((3, 32), (4, 32), (2, 32))
    for e in (q, g, t):
        assert e.dtype == torch.float32
        assert not e.requires_grad
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(e)), atol=1e-5)
    assert not torch.allclose(q[0], q[1], atol=1e-3)


@pytest.mark.parametrize("fusion", ["sum", "sum_raw", "image", "text"])
def test_query_fusion_equals_the_formula_on_the_models_own_features(clip_dir, fusion):
    bb = DualEncoderBackbone(str(clip_dir), fusion=fusion, query_template="a photo, {modification}")
    images, mods = _images(2), ["make it red", "turn it into a blue square"]
    q = bb.encode_query(images, mods)
    processor, model = bb.collator.processor, bb.base_model.eval()
    with torch.no_grad():
        text = model.get_text_features(**processor.tokenizer([f"a photo, {m}" for m in mods], padding=True,
                                                             return_tensors="pt")).pooler_output
        image = model.get_image_features(**processor.image_processor(images, return_tensors="pt")).pooler_output
    expected = {"sum": F.normalize(F.normalize(text, dim=-1) + F.normalize(image, dim=-1), dim=-1),
                "sum_raw": F.normalize(text + image, dim=-1),
                "image": F.normalize(image, dim=-1), "text": F.normalize(text, dim=-1)}[fusion]
    assert torch.allclose(q, expected, atol=1e-5)
    assert torch.allclose(bb.encode_gallery(images), F.normalize(image, dim=-1), atol=1e-5)


def test_padding_does_not_change_embeddings_and_left_padding_is_refused(clip):
    mods = ["short", "a considerably longer modification that needs much padding"]
    batch = clip.collator.query_inputs(_images(2), mods)
    assert batch["attention_mask"][0, -1] == 0  # right padded
    alone = clip.encode_query(_images(1), mods[:1])
    assert torch.allclose(clip.encode_query(_images(2), mods)[:1], alone, atol=1e-5)
    mask = batch["attention_mask"].bool()
    left = dict(batch)
    left["input_ids"] = torch.stack([torch.cat([r[~m], r[m]]) for r, m in zip(batch["input_ids"], mask, strict=True)])
    left["attention_mask"] = torch.stack([torch.cat([m[~m], m[m]]) for m in batch["attention_mask"]])
    with pytest.raises(CIRModelError, match="left-padded"), torch.no_grad():
        clip(left)


def test_siglip_text_is_padded_to_its_maximum_length(siglip_dir):
    bb = DualEncoderBackbone(str(siglip_dir))
    inputs = bb.collator.text_inputs(["red", "a red circle on the left"])
    assert set(inputs) == {"input_ids"}
    assert inputs["input_ids"].shape == (2, 16)
    assert torch.allclose(bb.encode_text(["red"]), bb.encode_text(["red", "a red circle on the left"])[:1], atol=1e-5)


def test_long_text_is_cut_keeping_eos_with_a_warning_or_refused(clip_dir):
    long = " ".join(["red"] * 100)
    bb = DualEncoderBackbone(str(clip_dir))
    with pytest.warns(UserWarning, match="longer than the model's maximum of 77"):
        ids = bb.collator.text_inputs([long])["input_ids"]
    assert ids.shape == (1, 77)
    assert ids[0, -1] == bb.collator.tokenizer.eos_token_id
    strict = DualEncoderBackbone(str(clip_dir), truncation="error")
    with pytest.raises(CIRDataError, match="102 tokens is longer"):
        strict.collator.text_inputs([long])


@pytest.mark.parametrize("towers", ["text", "vision", "both"])
def test_lora_sits_on_the_chosen_towers_only_and_the_rest_is_frozen(clip_dir, towers):
    bb = DualEncoderBackbone(str(clip_dir), lora=LoRA(r=2, alpha=4), lora_towers=towers)
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n for n in trainable)
    on = {tower for tower in ("text", "vision") if any(f".{tower}_model.encoder." in n for n in trainable)}
    assert on == ({"text", "vision"} if towers == "both" else {towers})
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_lora_targets_that_do_not_exist_are_an_error(clip_dir):
    with pytest.raises(CIRConfigError, match=r"\['qkv_proj'\] match no linear layer of the text tower"):
        DualEncoderBackbone(str(clip_dir), lora=LoRA(target_modules=["q_proj", "qkv_proj"]))


def test_adapter_round_trips_through_save_pretrained(clip_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    bb = DualEncoderBackbone(str(clip_dir), lora=LoRA(r=2, alpha=4, dropout=0.0))
    torch.manual_seed(1)
    for name, p in bb.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter do something
            p.data.normal_(0, 0.5)
    before = bb.encode_query(_images(2), ["make it red", "blue"])
    assert not torch.allclose(before, DualEncoderBackbone(str(clip_dir)).encode_query(_images(2), ["make it red", "blue"]))
    bb.save_adapter(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(AutoModel.from_pretrained(clip_dir), tmp_path / "adapter")
    fresh = DualEncoderBackbone(str(clip_dir))
    fresh.model = loaded.get_base_model()
    assert torch.allclose(fresh.encode_query(_images(2), ["make it red", "blue"]), before, atol=1e-6)
    with pytest.raises(CIRConfigError, match="no LoRA adapter"):
        DualEncoderBackbone(str(clip_dir)).save_adapter(tmp_path / "none")


def _samples(n: int, captions: bool = False) -> list[dict]:
    images = _images(n)
    out = []
    for i in range(n):
        s = {"index": i, "reference_image": images[i], "target_image": images[(i + 1) % n],
             "modification": f"make it {COLOURS[(i + 1) % len(COLOURS)]}"}
        if captions:
            s["target_caption"] = f"a {COLOURS[(i + 1) % len(COLOURS)]} picture"
        out.append(s)
    return out


def test_collator_batches_and_pickles(clip):
    collator = pickle.loads(pickle.dumps(clip.collator))
    batch = collator.triplets(_samples(4, captions=True))
    assert set(batch) == {"index", "query", "target", "target_group", "target_text"}
    assert set(batch["target"]) == {"pixel_values"}
    assert set(batch["target_text"]) == {"input_ids", "attention_mask"}
    assert "target_text" not in collator.triplets(_samples(4))
    samples = _samples(2)
    samples[1]["modification"] = ["make it red", "and bigger"]
    queries = collator.queries(samples)
    assert queries["query_groups"].tolist() == [0, 1, 1]
    assert queries["query"]["pixel_values"].shape[0] == 3
    gallery = collator.gallery([{"index": 7, "image": _images(1)[0]}])
    assert gallery["index"].tolist() == [7]
    assert set(gallery["gallery"]) == {"pixel_values"}
    assert clip.fingerprint()["fusion"] == "sum_raw"  # BGE-VL's composed query: normalize(text + image)


def test_a_cir_module_training_step_reduces_the_loss(clip_dir):
    from cir_lightning.module import CIRModule

    bb = DualEncoderBackbone(str(clip_dir), lora=LoRA(r=8, alpha=16, dropout=0.0))
    module = CIRModule(bb, warmup=0, lr_schedule="constant")
    batch = bb.collator.triplets(_samples(8))
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    module.train()
    losses = []
    for _ in range(15):
        terms = module.loss(module.backbone(batch["query"]), module.backbone(batch["target"]))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < 0.8 * losses[0], losses
