"""``SearchConfig(factory="auto")``: exact below ``AUTO_EXACT_ROWS`` gallery rows, an IVF index from there on."""

from __future__ import annotations

import faiss
import pytest
import torch

from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval import SearchConfig, build_index, search
from cir_lightning.retrieval import search_config as config_module


def _data(rows: int, dim: int = 16, queries: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    g = torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=-1)
    return torch.nn.functional.normalize(torch.randn(queries, dim, generator=generator), dim=-1), g


def test_below_the_threshold_auto_is_exact_and_equal_to_flat():
    q, g = _data(3000)
    excluded = [[i] for i in range(len(q))]
    auto = SearchConfig(factory="auto")
    assert auto.resolved(len(g)) == SearchConfig()
    assert torch.equal(search(q, g, 50, excluded, config=auto), search(q, g, 50, excluded))
    assert type(build_index(g, auto)).__name__ == "IndexFlat"  # the index command builds the same


def test_from_the_threshold_on_auto_builds_an_ivf_index(monkeypatch):
    monkeypatch.setattr(config_module, "AUTO_EXACT_ROWS", 2000)
    q, g = _data(30000)
    resolved = SearchConfig(factory="auto").resolved(len(g))
    assert (resolved.factory, resolved.nprobe, resolved.exact) == ("IVF512,Flat", 8, False)  # 4 sqrt(30000) = 693
    index = faiss.downcast_index(build_index(g, SearchConfig(factory="auto")))
    assert (type(index).__name__, index.nlist, index.nprobe) == ("IndexIVFFlat", 512, 8)
    with pytest.warns(UserWarning, match="chose the approximate index IVF512,Flat .* metrics are approximate"):
        approx = search(q, g, 10, config=SearchConfig(factory="auto"))
    exact = search(q, g, 10)
    overlap = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True)) / exact.numel()
    assert 0.3 < overlap  # approximate, and clearly not random (random rows would overlap by 10 / 30000)


def test_a_given_nprobe_is_kept_and_ef_search_is_refused():
    assert SearchConfig(factory="auto", nprobe=3).resolved(10**7).nprobe == 3
    assert SearchConfig(factory="auto", nprobe=3).resolved(10).nprobe is None  # Flat has no lists
    with pytest.raises(CIRConfigError, match="`factory: auto` builds no HNSW index"):
        SearchConfig(factory="auto", ef_search=64)


def test_auto_is_not_exact_until_resolved_and_the_torch_backend_ignores_it():
    assert not SearchConfig(factory="auto").exact
    assert SearchConfig(factory="auto", backend="torch").resolved(10**8).factory == "auto"


def test_index_command_with_factory_auto_builds_an_exact_index(tmp_path, tiny_model_dir):
    """``cir-lightning index --factory auto`` on a small folder: built exact (Flat), recorded as built (and as
    asked), searchable."""
    import json

    from PIL import Image

    from cir_lightning.cli import main
    from cir_lightning.image_index import ImageIndex
    from tests.test_cli import CONF

    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (24, 16), colour).save(tmp_path / f"{i}.png")
    main(["index", str(tmp_path), "--config", str(CONF), "--model.backbone.init_args.model_name_or_path",
          str(tiny_model_dir), "--out", str(tmp_path / "idx"), "--factory", "auto"])
    info = json.loads((tmp_path / "idx" / "meta.json").read_text())["image_index"]
    assert (info["search"]["factory"], info["search"]["asked"], info["faiss_index"]) == ("Flat", "auto", "IndexFlat")
    index = ImageIndex.open(tmp_path / "idx")
    hits = index.query(index.load_backbone(), Image.new("RGB", (24, 16), "red"), "the same", k=3)
    assert sorted(h.relpath for h in hits) == ["0.png", "1.png", "2.png"]
