"""Prompts per evaluation subset (E5-V words its FashionIQ prompts per category): the collator of each subset
fills that subset's templates, the DataModule hands each subset's loaders its own collator, and presets that
pool otherwise are refused."""

from __future__ import annotations

import pytest

from cir_lightning.backbones import HFMultimodalBackbone, Prompts
from cir_lightning.backbones.tiny import make_tiny_model
from cir_lightning.data.fashioniq import FashionIQDataModule
from cir_lightning.errors import CIRConfigError
from tests.data.fake_fashioniq import make_fake_fashioniq

E5V_FIQ = Prompts("e5v_fashioniq_dress", per_subset={"shirt": "e5v_fashioniq_shirt", "toptee": "e5v_fashioniq_shirt"})


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return HFMultimodalBackbone(str(make_tiny_model(tmp_path_factory.mktemp("m") / "tiny")), prompts=E5V_FIQ)


def _decoded(collator, samples) -> list[str]:
    batch = collator.queries(samples)
    return collator.tokenizer.batch_decode(batch["query"]["input_ids"], skip_special_tokens=False)


def test_each_category_gets_its_own_words_and_the_fingerprint_says_so(backbone, tmp_path):
    dm = FashionIQDataModule(str(make_fake_fashioniq(tmp_path / "fiq")), query_text="e5v")
    dm.connect(backbone.collator)
    dm.setup("validate")
    loaders = dm.val_dataloader()
    names = [queries.name for queries, _ in dm.val_sets]
    assert names == ["dress", "shirt", "toptee"]
    for i, name in enumerate(names):
        queries, gallery = loaders[2 * i], loaders[2 * i + 1]
        word = "dress" if name == "dress" else "shirt"  # E5-V asks about a "shirt" for toptee too
        text = _decoded(queries.collate_fn.__self__, [dm.val_sets[i][0][0]])[0]
        assert f"change the style of this {word} to" in text
        assert gallery.collate_fn.__self__.prompts.gallery.count(f"Describe this {word} in one word") == 1
    assert backbone.fingerprint()["prompts"]["per_subset"] == {"shirt": "e5v_fashioniq_shirt",
                                                                 "toptee": "e5v_fashioniq_shirt"}


def test_without_per_subset_every_subset_shares_one_collator(tmp_path):
    backbone = HFMultimodalBackbone(str(make_tiny_model(tmp_path / "tiny")), prompts=Prompts("e5v"))
    assert backbone.collator.for_subset("dress") is backbone.collator
    assert "per_subset" not in backbone.fingerprint()["prompts"]  # fingerprints of existing caches unchanged


@pytest.mark.parametrize(("per_subset", "message"), [
    ({"shirt": "nope"}, "`per_subset` names unknown preset 'nope' for 'shirt'"),
    ({"shirt": "fire"}, "`per_subset` preset 'fire' for 'shirt' pools otherwise (eos_block, EOS block 5)"),
])
def test_bad_per_subset_presets_are_refused(per_subset, message):
    with pytest.raises(CIRConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Prompts("e5v_fashioniq_dress", per_subset=per_subset).resolve()
