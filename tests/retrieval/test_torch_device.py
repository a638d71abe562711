"""The torch search backend computes where the embeddings are (or on the GPU asked for), on tensors."""

from __future__ import annotations

import pytest
import torch

from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval import SearchConfig, backends
from cir_lightning.retrieval.index import search_with_scores


def test_asking_for_a_gpu_without_one_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CIRConfigError, match=r"`search.device: cuda` needs a GPU.*use `device: cpu`"):
        search_with_scores(torch.eye(3), torch.eye(3), 2, config=SearchConfig(backend="torch", device="cuda"))


def test_tensors_are_searched_as_tensors_in_any_float_dtype(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(500, 16, generator=generator), dim=-1)
    queries = gallery[:40] + 0.05 * torch.randn(40, 16, generator=generator)
    excluded = [[i] for i in range(40)]
    exact_ids, exact_scores = search_with_scores(queries, gallery, 10, excluded, SearchConfig())
    seen = []
    real = backends.torch_topk
    monkeypatch.setattr("cir_lightning.retrieval.index.torch_topk",
                        lambda q, g, *a: seen.append((type(q), g.dtype, g.device)) or real(q, g, *a))
    ids, scores = search_with_scores(queries, gallery, 10, excluded, SearchConfig(backend="torch"))
    assert seen == [(torch.Tensor, torch.float32, torch.device("cpu"))]
    assert torch.equal(ids, exact_ids)
    torch.testing.assert_close(scores, exact_scores)
    half_ids, _ = search_with_scores(queries.bfloat16(), gallery.bfloat16(), 10, excluded,
                                     SearchConfig(backend="torch"))
    assert (half_ids[:, :3] == exact_ids[:, :3]).float().mean() > 0.9  # bfloat16 inputs, float32 products
    with pytest.raises(ValueError, match="`gallery` must be 2-d"):
        search_with_scores(queries, gallery[0], 10, config=SearchConfig(backend="torch"))


def test_the_torch_backend_runs_on_the_gallerys_device():
    cpu = torch.zeros(2, 2)
    assert backends.torch_device(cpu, cpu, SearchConfig(backend="torch")) == torch.device("cpu")
    meta = torch.empty(2, 2, device="meta")  # a device other than the CPU, without a GPU
    assert backends.torch_device(cpu, meta, SearchConfig(backend="torch")) == torch.device("cpu")


@pytest.mark.parametrize("user_setting", ["new", "legacy", "none"])
def test_exact_gpu_search_turns_tf32_off_however_the_user_turned_it_on(user_setting):
    """TF32 matmuls round the scores (near-ties swap); a user's TF32 setting, in torch's new or legacy form, is
    turned off for the search and put back after it, and reading it never fails."""
    matmul = torch.backends.cuda.matmul
    saved = torch.backends.fp32_precision, matmul.fp32_precision
    try:
        if user_setting == "new":
            torch.backends.fp32_precision = "tf32"  # the legacy `allow_tf32` cannot be read after this
        elif user_setting == "legacy":
            matmul.allow_tf32 = True
        before = matmul.fp32_precision
        with backends._full_float32(torch.device("cuda")):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == before
    finally:
        torch.backends.fp32_precision, matmul.fp32_precision = saved
