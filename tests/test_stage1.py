"""FiRE stage 1 (generative captions) and starting stage 2 from its adapter (``lora.init_adapter``)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cir_lightning.backbones import DualEncoderBackbone, HFMultimodalBackbone, XGenMMBackbone
from cir_lightning.backbones.lora import LoRA
from cir_lightning.backbones.pooling import position_ids_from_mask
from cir_lightning.backbones.prompts import Prompts
from cir_lightning.backbones.tiny import make_tiny_model
from cir_lightning.backbones.xgenmm.tiny import make_tiny_xgenmm
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRModelError
from cir_lightning.losses import caption_loss
from cir_lightning.module import CIRModule
from cir_lightning.stage1 import CaptionBatches

CAPTIONS = ["a blue square", "a green square with a yellow stripe"]


def _samples() -> list[dict]:
    mods = ["make it blue", "add a yellow stripe"]
    return [{"index": i, "reference_image": Image.new("RGB", (32 + 40 * i, 32), ("red", "green")[i]),
             "modification": mods[i], "target_caption": CAPTIONS[i]} for i in range(2)]


@pytest.fixture(scope="module")
def xgenmm(tmp_path_factory):
    path = make_tiny_xgenmm(tmp_path_factory.mktemp("xgenmm") / "tiny")
    torch.manual_seed(0)
    return XGenMMBackbone(str(path), anyres=False, lora=LoRA(r=2, alpha=4, dropout=0.0)).eval()


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("qwen") / "tiny", family="qwen2_vl")
    return HFMultimodalBackbone(str(path), prompts=Prompts("gme"), lora=LoRA(r=2, alpha=4, dropout=0.0)).eval()


@pytest.mark.parametrize("name", ["llava", "qwen", "xgenmm"])
def test_caption_batches_label_exactly_the_caption_and_its_eos(name, request):
    bb = request.getfixturevalue({"llava": "backbone", "qwen": "qwen", "xgenmm": "xgenmm"}[name])
    batch = CaptionBatches(bb.collator).triplets(_samples())
    inputs, labels = batch["caption"], batch["caption_labels"]
    tok, eos = bb.collator.tokenizer, bb.collator.eos_id
    for i, caption in enumerate(CAPTIONS):
        labelled = labels[i][labels[i] != -100]
        assert labelled.tolist() == tok(caption, add_special_tokens=False)["input_ids"] + [eos]
        n = len(labelled)  # left padding: the caption ends the row, and its ids are the input ids there
        assert torch.equal(inputs["input_ids"][i, -n:], labelled)
        assert bool(inputs["attention_mask"][i, -n:].all())
        prompt = inputs["input_ids"][i][inputs["attention_mask"][i].bool()][:-n]
        assert "describe the new image" in tok.decode(prompt)
        assert "square" not in tok.decode(prompt)
    assert inputs["attention_mask"][0, 0] == 0  # the shorter row is left-padded
    if "mm_token_type_ids" in inputs:  # Qwen's per-token types follow the new layout: caption tokens are text
        types = inputs["mm_token_type_ids"]
        assert types.shape == labels.shape
        assert not bool(types[labels != -100].any())
        assert bool(types.any())


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_hf_caption_loss_equals_transformers_own_language_model_loss(name, request):
    bb = request.getfixturevalue({"llava": "backbone", "qwen": "qwen"}[name])
    batch = CaptionBatches(bb.collator).triplets(_samples())
    inputs, labels = batch["caption"], batch["caption_labels"]
    with torch.no_grad():
        ours = caption_loss(*bb.caption_logits(inputs, labels))
        extra = {} if bb.mrope else {"position_ids": position_ids_from_mask(inputs["attention_mask"])}
        theirs = bb.base_model(**inputs, **extra, labels=labels).loss  # the model's own shifted LM loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_xgenmm_caption_logits_are_the_next_token_predictions_after_each_caption_prefix(xgenmm):
    """Independent of the label alignment: decode step by step (prompt + caption[:j], no padding, last
    position) and compare with the logits ``caption_logits`` gives the left-padded first row of a batch."""
    cb = CaptionBatches(xgenmm.collator)
    samples = _samples()
    batch = cb.triplets(samples)
    head = xgenmm.base_model.vlm.lang_model.lm_head
    with torch.no_grad():
        logits, targets = xgenmm.caption_logits(batch["caption"], batch["caption_labels"])
        rows = []
        for s in samples[:1]:
            prompt, _ = xgenmm.collator.caption_inputs([s["reference_image"]],
                                                       [cb.instruction.format(modification=s["modification"])], [""])
            prompt_ids = prompt["input_ids"][:, :-1]  # drop the EOS that ends the empty caption
            caption = xgenmm.collator.tokenizer(s["target_caption"], add_special_tokens=False)["input_ids"]
            for j in range(len(caption) + 1):
                ids = torch.cat([prompt_ids, torch.tensor([caption[:j]], dtype=torch.long)], dim=1)
                hidden, _ = xgenmm._hidden({**prompt, "input_ids": ids, "attention_mask": torch.ones_like(ids)})
                rows.append(head(hidden[:, -1]).float()[0])
    assert batch["caption"]["attention_mask"][0, 0] == 0  # the row checked is the padded one
    assert len(rows) == int((batch["caption_labels"][0] != -100).sum())
    torch.testing.assert_close(logits[:len(rows)], torch.stack(rows), rtol=1e-4, atol=1e-5)


def test_caption_batches_refuse_samples_without_captions_and_bad_instructions(backbone):
    samples = _samples()
    samples[1]["target_caption"] = None
    with pytest.raises(CIRDataError, match=r"dataset row\(s\) 1 have none.*with_captions"):
        CaptionBatches(backbone.collator).triplets(samples)
    with pytest.raises(CIRConfigError, match="`max_caption_tokens` must be an integer >= 1, got 0"):
        CIRModule(backbone, objective="caption", max_caption_tokens=0)
    with pytest.raises(CIRConfigError, match="needs <image> and \\{modification\\}"):
        CaptionBatches(backbone.collator, instruction="{modification} describe")


def test_a_dual_encoder_cannot_train_stage_one(tmp_path):
    bb = DualEncoderBackbone(str(tmp_path / "clip"), make_tiny_if_missing=True)
    with pytest.raises(CIRConfigError, match="stage 1 .* needs a multimodal LLM backbone"):
        CIRModule(bb, objective="caption")


def test_init_adapter_loads_an_adapter_folder_and_a_checkpoint_strictly(tiny_model_dir, tmp_path):
    torch.manual_seed(3)
    trained = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8))
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))  # LoRA B starts at 0: make every adapter weight non-trivial
    trained.save_adapter(tmp_path / "adapter")
    ckpt = {"state_dict": {f"backbone.{k}": v for k, v in trained.trainable_state_dict().items()},
            "cir_lightning": {"lora": {"r": 4, "lora_alpha": 8}}}
    torch.save(ckpt, tmp_path / "stage1.ckpt")
    deepspeed = tmp_path / "deepspeed.ckpt" / "checkpoint"  # DeepSpeedStrategy writes a folder
    deepspeed.mkdir(parents=True)
    everything = {f"_forward_module.backbone.model.{k}": v for k, v in trained.model.state_dict().items()}
    torch.save({"module": everything, "cir_lightning": ckpt["cir_lightning"]},  # frozen weights too
               deepspeed / "mp_rank_00_model_states.pt")
    for source in (tmp_path / "adapter", tmp_path / "stage1.ckpt", tmp_path / "deepspeed.ckpt"):
        started = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8, init_adapter=str(source)))
        assert started.weights_digest() == trained.weights_digest(), source
    assert HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8)).weights_digest() != \
        trained.weights_digest()

    with pytest.raises(CIRConfigError, match="other LoRA settings .*r: 4 in the adapter, 8 here"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=8, alpha=8, init_adapter=str(tmp_path / "adapter")))
    with pytest.raises(CIRConfigError, match="other LoRA settings .*lora_alpha: 8 in the adapter, 64 here"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=64, init_adapter=str(tmp_path / "stage1.ckpt")))
    with pytest.raises(CIRConfigError, match="does not fit this model's adapter.*: 16 unexpected") as info:
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                                            init_adapter=str(tmp_path / "adapter")))
    assert "missing" not in str(info.value)  # the adapter holds every weight this model needs, and more
    with pytest.raises(CIRConfigError, match="does not fit this model's adapter.*unexpected"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8, target_modules=["q_proj"],
                                                            init_adapter=str(tmp_path / "stage1.ckpt")))
    with pytest.raises(CIRConfigError, match="does not exist"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(init_adapter=str(tmp_path / "nope")))
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CIRModelError, match="`lora.init_adapter` `.*broken.ckpt` is not a torch checkpoint"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8, init_adapter=str(tmp_path / "broken.ckpt")))
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.ckpt")
    with pytest.raises(CIRConfigError, match="foreign.ckpt is a torch file but not a cir_lightning checkpoint"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8, init_adapter=str(tmp_path / "foreign.ckpt")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CIRConfigError, match="neither a peft adapter folder"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(init_adapter=str(tmp_path / "empty")))


def test_stage_one_on_data_without_captions_fails_before_training(backbone, tmp_path):
    import lightning.pytorch as pl

    from cir_lightning.data import SyntheticCIRDataModule

    data = SyntheticCIRDataModule(str(tmp_path / "data"), num_train=8, num_val=4, image_size=16, batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(CIRConfigError, match="with_captions: true"):
        trainer.fit(CIRModule(backbone, objective="caption"), datamodule=data)
