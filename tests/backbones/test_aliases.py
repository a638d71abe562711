"""The old import paths and names of the backbones package keep working (renamed with aliases)."""

from __future__ import annotations

from cir_lightning.backbones import dual_encoder, factory, processors, tiny, tiny_clip, tiny_families
from cir_lightning.backbones.xgenmm.tiny import make_tiny_xgenmm


def test_old_paths_and_names_point_to_the_new_ones():
    assert tiny_clip.make_tiny_dual_encoder is tiny.make_tiny_dual_encoder
    assert tiny_clip.tiny_clip_tokenizer is tiny.tiny_clip_tokenizer
    assert tiny_families.BUILDERS is tiny.TINY_MODELS
    assert tiny_families.Family is tiny.TinyFamily
    assert tiny_families.load_processor is processors.load_processor
    assert tiny_families.image_only_qwen_processor is processors.image_only_qwen_processor
    assert factory.FAMILIES is factory.MODEL_TYPE_TO_FAMILY
    assert factory.Family is factory.BackboneFamily
    assert dual_encoder.FAMILIES is dual_encoder.DUAL_ENCODER_TYPES
    assert callable(make_tiny_xgenmm)


def test_every_tiny_family_is_in_one_registry():
    assert list(tiny.TINY_MODELS) == ["llava_next", "llava", "idefics3", "qwen2_vl", "qwen2_5_vl", "paligemma"]
    assert set(factory.list_backbones()) == set(factory.BACKBONES)
