"""xGen-MM image fitting rounds exactly as the original ``resize_and_pad_image``, over every size up to 2048.

The reference below restates the original's arithmetic independently (scale = target / size first, the
smaller scale by ``<`` fills, ``min(ceil(side * scale), target side)``), vectorised with numpy float64,
which rounds every operation exactly as Python floats do.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from cir_lightning.backbones.xgenmm.layout import select_best_resolution
from cir_lightning.backbones.xgenmm.modeling import ANYRES_GRIDS
from cir_lightning.backbones.xgenmm.processing import fitted_size, resize_and_pad

SIDE = 2048
GRIDS = [tuple(g) for g in ANYRES_GRIDS]
# sizes in [1, 2048]^2 where ceil(h * tw / w) (the old formula) and the original disagree, per canvas
NAIVE_DIFFERS = {(384, 768): 374, (768, 384): 374, (768, 768): 270, (1152, 384): 554, (384, 1152): 554}
# of those, the sizes whose canvas select_best_resolution actually picks (what the processor changes)
NAIVE_DIFFERS_SELECTED = 384


def _grid() -> tuple[np.ndarray, np.ndarray]:
    w = np.arange(1, SIDE + 1, dtype=np.float64)[:, None]
    h = np.arange(1, SIDE + 1, dtype=np.float64)[None, :]
    return w, h


def _original(w: np.ndarray, h: np.ndarray, tw: int, th: int) -> tuple[np.ndarray, np.ndarray]:
    scale_w = tw / w
    scale_h = th / h
    fill_w = scale_w < scale_h
    new_w = np.where(fill_w, tw, np.minimum(np.ceil(w * scale_h), tw))
    new_h = np.where(fill_w, np.minimum(np.ceil(h * scale_w), th), th)
    return new_w.astype(np.int64), new_h.astype(np.int64)


def _naive(w: np.ndarray, h: np.ndarray, tw: int, th: int) -> tuple[np.ndarray, np.ndarray]:
    fill_w = tw / w < th / h
    new_w = np.where(fill_w, tw, np.minimum(np.ceil(w * th / h), tw))
    new_h = np.where(fill_w, np.minimum(np.ceil(h * tw / w), th), th)
    return new_w.astype(np.int64), new_h.astype(np.int64)


@pytest.fixture(scope="module")
def reference():
    """Per canvas: the original's (new_w, new_h) for every size, and the mask where the naive formula differs."""
    w, h = _grid()
    out = {}
    for tw, th in GRIDS:
        ow, oh = _original(w, h, tw, th)
        nw, nh = _naive(w, h, tw, th)
        out[(tw, th)] = (ow, oh, (ow != nw) | (oh != nh))
    return out


def _paste_box(target, new):
    (tw, th), (nw, nh) = target, new
    x, y = (tw - nw) // 2, (th - nh) // 2
    return x, y, x + nw, y + nh


@pytest.mark.parametrize(("size", "target", "expected", "naive"), [
    ((800, 600), (56, 56), (56, 43), (56, 42)),        # 600 * (56 / 800) = 42.00000000000001
    ((68, 85), (384, 768), (384, 481), (384, 480)),
])
def test_named_cases_round_as_the_original(size, target, expected, naive):
    (w, h), tw = size, target[0]
    assert (tw, math.ceil(h * tw / w)) == naive  # the old formula
    assert fitted_size(size, target) == expected
    box = resize_and_pad(Image.new("RGB", size, "white"), target).getbbox()
    assert box == _paste_box(target, expected)


def test_every_size_matches_the_original(reference):
    rng = np.random.default_rng(0)
    for target, (ow, oh, differs) in reference.items():
        # every size where the rounding order matters goes through our function
        for i, j in zip(*np.nonzero(differs), strict=True):
            assert fitted_size((int(i) + 1, int(j) + 1), target) == (ow[i, j], oh[i, j]), (i + 1, j + 1, target)
        # and a random sample of the others
        others = np.flatnonzero(~differs)
        for k in rng.choice(others, size=20_000 // len(GRIDS), replace=False):
            i, j = divmod(int(k), SIDE)
            assert fitted_size((i + 1, j + 1), target) == (ow[i, j], oh[i, j]), (i + 1, j + 1, target)


def test_the_grid_holds_the_cases_the_old_formula_got_wrong(reference):
    """The dense grid exercises every size the naive formula rounds differently; the old code fails here."""
    counts = {target: int(differs.sum()) for target, (_, _, differs) in reference.items()}
    assert counts == NAIVE_DIFFERS
    assert sum(counts.values()) == 2126
    # the ones the processor meets: sizes whose best canvas (select_best_resolution, vectorised) is the one
    w, h = _grid()
    area = (w * h).astype(np.int64)
    best = np.zeros(area.shape, dtype=np.int64)
    best_eff = np.full(area.shape, -1, dtype=np.int64)
    best_waste = np.full(area.shape, np.inf)
    for k, (gw, gh) in enumerate(GRIDS):
        s = np.minimum(gw / w, gh / h)
        eff = np.minimum(np.floor(w * s).astype(np.int64) * np.floor(h * s).astype(np.int64), area)
        waste = gw * gh - eff
        take = (eff > best_eff) | ((eff == best_eff) & (waste < best_waste))
        best, best_eff, best_waste = np.where(take, k, best), np.where(take, eff, best_eff), np.where(take, waste, best_waste)
    selected = sum(int((reference[g][2] & (best == k)).sum()) for k, g in enumerate(GRIDS))
    assert selected == NAIVE_DIFFERS_SELECTED
    rng = np.random.default_rng(1)
    for i, j in rng.integers(0, SIDE, size=(2000, 2)):
        assert select_best_resolution((int(i) + 1, int(j) + 1), ANYRES_GRIDS) == GRIDS[best[i, j]]


def test_pasted_box_where_the_original_puts_it(reference):
    """A few of the disagreeing sizes through resize_and_pad itself: the image lands where the original's does."""
    for target, (ow, oh, differs) in reference.items():
        for i, j in list(zip(*np.nonzero(differs), strict=True))[:2]:
            size = (int(i) + 1, int(j) + 1)
            box = resize_and_pad(Image.new("RGB", size, "white"), target).getbbox()
            assert box == _paste_box(target, (int(ow[i, j]), int(oh[i, j])))
