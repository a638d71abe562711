"""xGen-MM native port: strict loading, published layout, embeddings, padding, LoRA, anyres tiling."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cir_lightning.backbones.lora import LoRA
from cir_lightning.backbones.xgenmm import (
    XGenMMBackbone,
    XGenMMConfig,
    XGenMMImageProcessor,
    XGenMMModel,
    check_index,
    load_xgenmm,
    make_tiny_xgenmm,
    published_weight_shapes,
)
from cir_lightning.backbones.xgenmm.layout import select_best_resolution, unpad_mask
from cir_lightning.backbones.xgenmm.modeling import ANYRES_GRIDS
from cir_lightning.errors import CIRModelError

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_xgenmm(tmp_path_factory.mktemp("xgenmm") / "tiny")


@pytest.fixture(scope="module")
def xbackbone(tiny_dir):
    bb = XGenMMBackbone(str(tiny_dir), lora=LoRA(r=2, alpha=4, dropout=0.0))
    torch.manual_seed(1)
    for name, p in bb.named_parameters():  # peft starts lora_B at zero: make the adapter do something
        if "lora_B" in name:
            p.data.normal_(std=0.5)
    return bb


def _images() -> list[Image.Image]:  # tiny grids (28 px crops): 2x1, 1x3, 3x1 and 2x2 tiles
    return [Image.new("RGB", (60, 30), "red"), Image.new("RGB", (30, 61), "blue"),
            Image.new("RGB", (90, 30), "green"), Image.new("RGB", (40, 40), "white")]


def test_full_size_layout_matches_the_published_index():
    with torch.device("meta"):
        model = XGenMMModel(XGenMMConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    published = published_weight_shapes(XGenMMConfig())
    assert shapes == published
    assert len(shapes) == 718
    assert sum(torch.Size(s).numel() for s in shapes.values()) * 4 == 17_437_028_876  # metadata.total_size, fp32
    assert "vlm.lang_model.lm_head.bias" in shapes
    assert "vlm.vision_encoder.head.probe" in shapes
    index = {"metadata": {"total_size": 17_437_028_876},
             "weight_map": {n: f"model-0000{i % 4 + 1}-of-00004.safetensors" for i, n in enumerate(published)}}
    check_index(index)
    index["weight_map"]["vlm.vision_tokenizer.layers.0.0.to_q.bias"] = "x"
    with pytest.raises(CIRModelError, match=r"1 unexpected: vlm\.vision_tokenizer\.layers\.0\.0\.to_q\.bias"):
        check_index(index)


def test_index_file_on_disk_is_checked(tmp_path):
    names = list(published_weight_shapes(XGenMMConfig()))
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": {n: "a.safetensors" for n in names if "lm_head.bias" not in n}}))
    with pytest.raises(CIRModelError, match=r"1 missing: vlm\.lang_model\.lm_head\.bias"):
        check_index(path)


@pytest.mark.parametrize(("edit", "message"), [
    ("drop", r"1 missing: vlm\.vision_tokenizer\.latents"),
    ("extra", r"1 unexpected: vlm\.vision_tokenizer\.extra"),
    ("shape", r"1 wrong shape: vlm\.vision_tokenizer\.latents: checkpoint \[1, 32\]"),
])
def test_strict_load_names_the_bad_weight(tiny_dir, tmp_path, edit, message):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(tiny_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    if edit == "drop":
        del state["vlm.vision_tokenizer.latents"]
    elif edit == "extra":
        state["vlm.vision_tokenizer.extra"] = torch.zeros(2)
    else:
        state["vlm.vision_tokenizer.latents"] = torch.zeros(1, 32)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CIRModelError, match=message):
        load_xgenmm(folder)


def test_tiny_round_trip_is_exact_and_sharded_folders_load(tiny_dir, tmp_path):
    model = load_xgenmm(tiny_dir)
    saved = load_file(str(tiny_dir / "model.safetensors"))
    assert set(model.state_dict()) == set(saved)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    keys = sorted(saved)  # the same weights split into two shards with an index
    half = len(keys) // 2
    shard = tmp_path / "sharded"
    shard.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (shard / f).write_bytes((tiny_dir / f).read_bytes())
    for name, part in (("a.safetensors", keys[:half]), ("b.safetensors", keys[half:])):
        save_file({k: saved[k] for k in part}, str(shard / name))
    weight_map = {k: "a.safetensors" if i < half else "b.safetensors" for i, k in enumerate(keys)}
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    again = load_xgenmm(shard)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in saved.items())


def test_anyres_grid_and_tiles_hand_checked():
    # 1000x500 (2:1): 768x384 keeps 294912 px; 768x768 and 1152x384 keep as many but waste more.
    assert select_best_resolution((1000, 500), ANYRES_GRIDS) == (768, 384)
    assert select_best_resolution((500, 500), ANYRES_GRIDS) == (768, 768)
    assert select_best_resolution((300, 1000), ANYRES_GRIDS) == (384, 1152)
    # an image smaller than every canvas keeps all its pixels everywhere: the least waste wins, and
    # 384x768 (listed first) ties with 768x384, so even a landscape thumbnail gets the portrait grid
    assert select_best_resolution((200, 100), ANYRES_GRIDS) == (384, 768)
    image = Image.new("RGB", (1000, 500), "red")
    image.paste(Image.new("RGB", (500, 500), "blue"), (500, 0))
    proc = XGenMMImageProcessor(crop_size=384)
    crops = proc.crops(image)
    assert crops.shape == (3, 3, 384, 384)  # squashed whole image + left tile + right tile
    assert crops.min() >= -1
    assert crops.max() <= 1
    red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])
    assert torch.allclose(crops[1, :, 192, 192], red)
    assert torch.allclose(crops[2, :, 192, 192], blue)
    # a 1000x200 image on a 1152x384 canvas: the tiles' top/bottom bands are letterbox, masked out
    mask = unpad_mask((1000, 200), 27, 81)
    assert mask.sum(1).tolist() == [0.0] * 5 + [81.0] * 17 + [0.0] * 5  # new_h = int(200 * 81 / 1000) = 16, pad 5


def test_processor_outputs_and_image_count_check(xbackbone):
    proc = xbackbone.collator.processor
    assert proc.image_token_id == xbackbone.base_model.xgenmm_config.initial_tokenizer_len
    out = proc(images=_images()[:2], text=["<image> a", "b <image>"], padding=True, return_tensors="pt")
    assert out["pixel_values"].shape == (2, 4, 3, 28, 28)  # padded to the most crops
    assert out["image_num_crops"].tolist() == [3, 4]  # 60x30 -> 56x28 canvas (2x1); 30x61 -> 28x84 (1x3)
    assert out["image_sizes"].tolist() == [[60, 30], [30, 61]]
    with pytest.raises(CIRModelError, match="1 `<image>` token"):
        proc(images=_images()[:2], text=["<image> a"], padding=True, return_tensors="pt")


def test_embeddings_are_normalised_and_use_the_images(xbackbone):
    images = _images()
    q = xbackbone.encode_query(images, ["make it red", "a longer modification text", "x", "small"])
    g = xbackbone.encode_gallery(images)
    t = xbackbone.encode_text(["a red circle", "blue"])
    assert q.shape == g.shape == (4, 64)
    assert t.shape == (2, 64)
    for e in (q, g, t):
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(e)), atol=1e-5)
    assert not torch.allclose(g[0], g[1], atol=1e-4)  # different images, same text
    inputs = xbackbone.collator.gallery_inputs(images[:1])
    assert (inputs["input_ids"][:, -5:] == xbackbone.collator.tokenizer.convert_tokens_to_ids("<|end|>")).all()


def test_left_and_right_padding_and_batching_give_the_same_embeddings(xbackbone):
    images, mods = _images()[:3], ["short", "a considerably longer modification that needs padding", "x"]
    left = xbackbone.collator.query_inputs(images, mods)
    mask = left["attention_mask"].bool()
    right = dict(left)
    right["input_ids"] = torch.stack([torch.cat([r[m], r[~m]]) for r, m in zip(left["input_ids"], mask, strict=True)])
    right["attention_mask"] = torch.stack([torch.cat([a[m], a[~m]]) for a, m in zip(left["attention_mask"], mask, strict=True)])
    assert not torch.equal(right["input_ids"], left["input_ids"])
    xbackbone.eval()
    with torch.no_grad():
        a, b = xbackbone(left), xbackbone(right)
    alone = xbackbone.encode_query(images[1:2], mods[1:2])
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[1:2], alone, atol=1e-5)


def test_lora_only_on_the_phi3_decoder_and_gradients_flow(xbackbone):
    trainable = [n for n, p in xbackbone.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n and ".vlm.lang_model.model.layers." in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert not any("lora_" in n for n, _ in xbackbone.named_modules()
                   if ".vision_encoder." in n or ".vision_tokenizer." in n or ".lm_head" in n)
    xbackbone.train()
    loss = xbackbone(xbackbone.collator.gallery_inputs(_images()[:2])).sum()
    loss.backward()
    assert all(p.grad is not None for p in xbackbone.parameters() if p.requires_grad)
    xbackbone.zero_grad(set_to_none=True)


def test_adapter_round_trips_through_peft(xbackbone, tiny_dir, tmp_path):
    from peft import PeftModel

    xbackbone.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    fresh = XGenMMBackbone(str(tiny_dir))
    plain = fresh.encode_gallery(_images()[:2])
    fresh.model = PeftModel.from_pretrained(fresh.model, str(tmp_path / "adapter"))
    fresh.lora = LoRA(r=2, alpha=4)
    expected = xbackbone.encode_gallery(_images()[:2])
    assert torch.allclose(fresh.encode_gallery(_images()[:2]), expected, atol=1e-5)
    assert not torch.allclose(plain, expected, atol=1e-3)


def test_an_unknown_name_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CIRModelError, match="not a local folder and cannot be fetched from the hub .offline mode"):
        XGenMMBackbone("someone/not-a-real-xgenmm")


def test_the_removed_old_name_model_path_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    """`model_path`, the old name of `model_name_or_path`, was still taken with a FutureWarning (FiRE's release configs
    name the model `model.base_model`, which `convert-fire-config` maps to `model_name_or_path`)."""
    from cir_lightning.cli import main

    config = tmp_path / "old.yaml"
    config.write_text("model:\n  backbone:\n    class_path: cir_lightning.backbones.XGenMMBackbone\n"
                      "    init_args:\n      model_path: some/folder\n")
    monkeypatch.delenv("CIR_LIGHTNING_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(config)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("error: option `model.backbone` (cir_lightning.backbones."
                                                        "XGenMMBackbone): Option 'model_path' is not accepted")
    with pytest.raises(TypeError, match="model_path"):
        XGenMMBackbone(model_path="some/folder")
