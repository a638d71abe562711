"""Golden test: our native xGen-MM port equals the ORIGINAL xGen-MM code on a tiny checkpoint.

``tests/goldens/xgenmm`` was written by ``scripts/goldens/make_xgenmm.py`` with the original files (HF
``modeling_xgenmm.py`` + ``image_processing_blip_3.py`` for the classes and the processor, LAVIS ``xgen-mm``
for the interleave-r-v1.5 forward) under transformers 4.44.2; see its ``provenance.json``. Here the same
checkpoint is loaded with ``XGenMMBackbone`` as a user's config would and compared:

- image processor (anyres crops, 5 images in modes RGB / L / RGBA / P): bit-exact;
- tokenizer (transformers 5 vs 4.44 on the same tokenizer.json): identical ids;
- last-layer hidden states over the spliced sequence (gallery and query prompts, one sample per call):
  bit-exact (atol 0) with eager attention, the implementation the original runs (transformers 4.44's Phi-3
  has no sdpa; the golden also ran SigLIP eager). Our default attention is sdpa: same function, fused
  kernel, so a float32 rounding tolerance (atol 2e-5 on values of magnitude ~1; measured ~2e-6);
- the EOS-block embedding (mean of the 5 ``<|end|>`` states, L2-normalised) and padding invariance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cir_lightning.backbones.xgenmm import XGenMMBackbone
from tests.goldens.exact import assert_golden
from tests.goldens.recipe import GOLDENS, load_images, load_outputs, load_texts, materialize

GOLDEN = GOLDENS / "xgenmm"
RELEASE_GALLERY = "Describe the image <image> ? <|end|> <|end|> <|end|> <|end|> <|end|>"
RELEASE_QUERY = ("Given the reference image <image> but modify it with: {}. Describe the new image ? "
                 "<|end|> <|end|> <|end|> <|end|> <|end|>")


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> tuple[XGenMMBackbone, dict[str, np.ndarray]]:
    folder = materialize(GOLDEN, tmp_path_factory.mktemp("golden") / "xgenmm")
    return XGenMMBackbone(model_name_or_path=str(folder)), load_outputs(GOLDEN)


def _split(out: dict[str, np.ndarray], key: str, lengths: str) -> list[np.ndarray]:
    return np.split(out[key], np.cumsum(out[lengths])[:-1])


def _attention(bb: XGenMMBackbone, implementation: str) -> None:
    """Switch the decoder's and SigLIP's attention implementation (read at every forward in transformers 5)."""
    bb.base_model.get_decoder().config._attn_implementation = implementation
    bb.base_model.vlm.vision_encoder.config._attn_implementation = implementation


def _inputs(bb: XGenMMBackbone, ids: list[np.ndarray], rows: list[int]) -> dict[str, torch.Tensor]:
    """A left-padded batch of golden token ids for images ``rows``, with our processor's pixels."""
    length = max(len(ids[i]) for i in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for r, i in enumerate(rows):
        input_ids[r, length - len(ids[i]):] = torch.from_numpy(ids[i])
        mask[r, length - len(ids[i]):] = 1
    images = load_images()
    return {"input_ids": input_ids, "attention_mask": mask,
            **bb.collator.processor.image_processor([images[i] for i in rows])}


def test_image_processor_bit_exact(golden: tuple[XGenMMBackbone, dict[str, np.ndarray]]) -> None:
    bb, out = golden
    got = bb.collator.processor.image_processor(load_images())
    assert got["image_num_crops"].tolist() == out["num_crops"].tolist() == [5, 4, 5, 4, 5]
    assert got["image_sizes"].tolist() == out["image_sizes"].tolist()
    crops = torch.cat([got["pixel_values"][i, :n] for i, n in enumerate(out["num_crops"].tolist())])
    assert torch.equal(crops, torch.from_numpy(out["pixel_values"]))


def test_tokenizer_gives_the_original_ids(golden: tuple[XGenMMBackbone, dict[str, np.ndarray]]) -> None:
    bb, out = golden
    tok = bb.collator.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == bb.image_token_id == 428  # initial_tokenizer_len: row 0 of extras
    for ids in _split(out, "g_ids", "g_len"):
        assert tok(RELEASE_GALLERY)["input_ids"] == ids.tolist()
    for m, ids in zip(load_texts()["modifications"], _split(out, "q_ids", "q_len"), strict=True):
        assert tok(RELEASE_QUERY.format(m.strip()))["input_ids"] == ids.tolist()


@pytest.mark.parametrize("kind", ["g", "q"])
@pytest.mark.parametrize(("implementation", "atol"), [("eager", 0.0), ("sdpa", 2e-5)])
def test_hidden_states_equal_the_original(golden: tuple[XGenMMBackbone, dict[str, np.ndarray]], kind: str,
                                          implementation: str, atol: float) -> None:
    bb, out = golden
    ids, hidden = _split(out, f"{kind}_ids", f"{kind}_len"), _split(out, f"{kind}_hidden", f"{kind}_hlen")
    _attention(bb, implementation)
    try:
        for i in range(5):
            with torch.no_grad():
                got, mask = bb._hidden(_inputs(bb, ids, [i]))
            assert bool(mask.all())
            assert got.shape[1:] == hidden[i].shape
            assert_golden(got[0], hidden[i], atol=atol)
    finally:
        _attention(bb, "sdpa")


def test_eos_block_embedding_and_padding(golden: tuple[XGenMMBackbone, dict[str, np.ndarray]]) -> None:
    """Our embedding = mean of the 5 ``<|end|>`` states of the original's hidden states, L2-normalised, and a
    left-padded batch of all five queries gives the per-sample result (positions counted on real tokens)."""
    bb, out = golden
    ids, hidden = _split(out, "q_ids", "q_len"), _split(out, "q_hidden", "q_hlen")
    expected = F.normalize(torch.stack([torch.from_numpy(h[-5:]).mean(0) for h in hidden]), dim=-1)
    _attention(bb, "eager")
    try:
        with torch.no_grad():
            got = bb(_inputs(bb, ids, list(range(5))))
    finally:
        _attention(bb, "sdpa")
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)  # batched matmuls: rounding only


def test_golden_is_small() -> None:
    assert sum(p.stat().st_size for p in Path(GOLDEN).rglob("*") if p.is_file()) < 300_000
