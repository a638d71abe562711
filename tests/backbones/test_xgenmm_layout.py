"""xGen-MM's batch layout: the gathers equal the row-by-row splice exactly, and the forward reads the batch's
values back to the host once (each such read on a GPU waits for all queued work)."""

from __future__ import annotations

import pickle
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from transformers import SiglipVisionModel

from cir_lightning.backbones import LoRA, XGenMMBackbone
from cir_lightning.backbones.xgenmm.layout import splice_layout
from cir_lightning.errors import CIRModelError

PACKAGE = str(Path(__file__).parents[2] / "cir_lightning")
# what reads a tensor's values on the host (on a GPU: a wait for the queue), boolean-mask indexing aside
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
         torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero, torch.masked_select,
         torch.Tensor.masked_select, torch.Tensor.numpy, torch.unique, torch.Tensor.unique, torch.Tensor.cpu}


class DeviceReads(TorchFunctionMode):
    """Counts host reads of tensors derived from the "device" tensors (the model's and the inputs'), by the
    file that made them: a CPU run stands for a GPU one, with every value computed from them tainted."""

    def __init__(self, device_tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self.kept = list(device_tensors)  # held, so that no id is reused during the count
        self.tainted = {id(t) for t in device_tensors}
        self.reads: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        leaves = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        from_device = any(id(x) in self.tainted for x in leaves)
        masked = func is torch.Tensor.__getitem__ and any(x.dtype == torch.bool for x in leaves[1:])
        if from_device and (func in READS or masked):
            frame = [f for f in traceback.extract_stack()[:-1] if "torch/overrides" not in f.filename][-1]
            self.reads["ours" if frame.filename.startswith(PACKAGE) else Path(frame.filename).name] += 1
        out = func(*args, **kwargs)
        if func is torch.Tensor.cpu:  # a copy on the host (on the CPU, .cpu() would return the tensor itself)
            return out.clone()
        if from_device:
            for x in tree_flatten(out)[0]:
                if isinstance(x, torch.Tensor):
                    self.kept.append(x)
                    self.tainted.add(id(x))
        return out


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> XGenMMBackbone:
    folder = tmp_path_factory.mktemp("layout") / "tiny"
    bb = XGenMMBackbone(str(folder), make_tiny_if_missing=True, lora=LoRA(r=2, alpha=4))
    return bb.eval()


def _images() -> list[Image.Image]:  # 3, 3, 4 and 5 crops on the tiny model's grids
    return [Image.new("RGB", size, color) for size, color in
            [((28, 28), "red"), ((60, 30), "blue"), ((30, 61), "green"), ((90, 90), "white")]]


def _reads(backbone: XGenMMBackbone, inputs: dict[str, torch.Tensor]) -> Counter[str]:
    mode = DeviceReads([*inputs.values(), *backbone.parameters(), *backbone.buffers()])
    with torch.no_grad(), mode:
        backbone(inputs)
    return mode.reads


def test_the_forward_reads_the_batch_to_the_host_once(backbone: XGenMMBackbone) -> None:
    queries = backbone.collator.query_inputs(_images(), ["red", "a much longer modification text", "x", "blue"])
    assert queries["image_num_crops"].tolist() == [3, 3, 4, 5]
    texts = backbone.collator.text_inputs(["a caption", "another, longer caption"])
    for inputs in (queries, texts):
        reads = _reads(backbone, inputs)
        # ours: the layout's one copy (it was 5 per row + 4: 24 here, 84 at batch 16); transformers' mask
        # helper reads the padding mask on its own (not ours to change)
        assert reads["ours"] == 1, reads


def _row_by_row(embeds: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, images: list[torch.Tensor],
                image_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The splice as the original writes it: each row's real tokens, its images cut in, left-padded."""
    rows, k = [], 0
    for row_ids, emb, m in zip(ids, embeds, mask.bool(), strict=True):
        row_ids, emb = row_ids[m], emb[m]
        parts, start = [], 0
        for pos in (row_ids == image_id).nonzero().flatten().tolist():
            parts += [emb[start:pos], images[k]]
            k, start = k + 1, pos + 1
        rows.append(torch.cat([*parts, emb[start:]]))
    length = max(len(r) for r in rows)
    out, new_mask = embeds.new_zeros(len(rows), length, embeds.shape[-1]), mask.new_zeros(len(rows), length)
    for i, r in enumerate(rows):
        out[i, length - len(r):], new_mask[i, length - len(r):] = r, 1
    return out, new_mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_gathered_splice_equals_the_row_by_row_one(side: str) -> None:
    # rows with 0, 1 and 2 images, padding on either side; 3 images of 1 crop each (2 visual tokens per crop)
    real = [[5, 9, 6, 9, 7], [8], [9, 6, 6]]
    width = 6
    ids, mask = torch.zeros(3, width, dtype=torch.long), torch.zeros(3, width, dtype=torch.long)
    for r, row in enumerate(real):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[r, cols], mask[r, cols] = torch.tensor(row), 1
    layout = splice_layout(ids, mask, torch.tensor([1, 1, 1]), torch.tensor([[20, 20]] * 3), max_crops=2,
                           image_token_id=9, num_vis_tokens=2, side=1, crop_size=14, grids=[[28, 14]])
    embeds, images = torch.randn(3, width, 4), torch.randn(6, 4)
    source = torch.cat([embeds.flatten(0, 1), images, embeds.new_zeros(1, 4)])
    expected, expected_mask = _row_by_row(embeds, ids, mask, list(images.split(2)), 9)
    assert torch.equal(source[layout.splice_index], expected)
    assert torch.equal(layout.splice_mask, expected_mask)
    assert layout.lengths == [7, 1, 4]
    assert layout.tokens_per_image == [2, 2, 2]
    assert layout.crop_index.tolist() == [0, 2, 4]  # the first of each image's 2 padded crop slots


def test_anyres_groups_follow_the_original_regrouping() -> None:
    # a 2 x 1 grid (two crops side by side) of 2 x 2 patches: the original cuts the full-width map into
    # contiguous bands of 4 tokens, so group 1 takes row 0 of both crops, group 2 row 1
    layout = splice_layout(torch.tensor([[9]]), torch.tensor([[1]]), torch.tensor([3]), torch.tensor([[56, 28]]),
                           max_crops=3, image_token_id=9, num_vis_tokens=1, side=2, crop_size=28,
                           grids=[[56, 28]])
    assert layout.group_index.tolist() == [[0, 1, 2, 3], [4, 5, 8, 9], [6, 7, 10, 11]]
    assert layout.media_mask.all()
    assert layout.tokens_per_image == [3]


def test_the_vision_tower_skips_only_the_pooling_head_and_pickles(backbone: XGenMMBackbone) -> None:
    tower = backbone.base_model.vlm.vision_encoder
    crops = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        full = SiglipVisionModel.forward(tower, crops)  # transformers' own forward runs the head too
        assert full.pooler_output is not None
        assert torch.equal(tower(crops), full.last_hidden_state)
        copy = pickle.loads(pickle.dumps(tower))  # DDP spawn and whole-module saves pickle it by name
        assert type(copy) is type(tower)
        assert torch.equal(copy(crops), full.last_hidden_state)
    assert "head.probe" in tower.state_dict()  # the checkpoint's weights all stay for a strict load


def test_bad_batches_are_named_before_any_work() -> None:
    common = {"max_crops": 3, "image_token_id": 9, "num_vis_tokens": 1, "side": 2, "crop_size": 28,
              "grids": [[56, 28]]}
    with pytest.raises(CIRModelError, match=r"the batch has 2 `<image>` token\(s\) but 1 image\(s\)"):
        splice_layout(torch.tensor([[9, 9]]), torch.tensor([[1, 1]]), torch.tensor([1]), torch.tensor([[9, 9]]),
                      **common)
    with pytest.raises(CIRModelError, match=r"has 2 crops; its anyres grid 2x1 needs 3"):
        splice_layout(torch.tensor([[9]]), torch.tensor([[1]]), torch.tensor([2]), torch.tensor([[56, 28]]), **common)
    # crop counts past the pixel slots would gather another image's crops (or past the end, a device assert
    # on a GPU): named on the host
    ids, mask, sizes = torch.tensor([[9, 9]]), torch.tensor([[1, 1]]), torch.tensor([[56, 28], [9, 9]])
    with pytest.raises(CIRModelError, match=r"image 0 of the batch has 4 crop\(s\), but `pixel_values` holds 1 to 3"):
        splice_layout(ids, mask, torch.tensor([4, 1]), sizes, **common)
    with pytest.raises(CIRModelError, match=r"image 1 of the batch has 0 crop\(s\)"):
        splice_layout(ids, mask, torch.tensor([3, 0]), sizes, **common)
    with pytest.raises(CIRModelError, match=r"has 1 crop\(s\), but `pixel_values` holds no images"):
        splice_layout(ids[:, :1], mask[:, :1], torch.tensor([1]), sizes[1:], **{**common, "max_crops": 0})
