"""RowFile (block reads and writes of an .npy without a memory map) and the chunked index build over it."""

from __future__ import annotations

import numpy as np
import pytest

from cir_lightning.errors import CIRDataError
from cir_lightning.retrieval import SearchConfig, backends, build_index
from cir_lightning.retrieval.backends import build_index_from
from cir_lightning.retrieval.embedding_folder import new_embeddings
from cir_lightning.retrieval.rowfile import RowFile


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_writes_in_any_order_land_where_a_memory_map_reads_them(tmp_path, dtype):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((50, 6)).astype(dtype)
    new_embeddings(tmp_path, 50, 6, dtype).flush()
    order = np.concatenate([np.arange(0, 50, 3), np.arange(1, 50, 3), np.arange(2, 50, 3)])  # as DDP ranks do
    with RowFile(tmp_path / "embeddings.npy", writable=True) as file:
        for part in np.array_split(order, 7):
            file.write(part, rows[part])
        assert file.shape == (50, 6)
        assert file.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(file.read(10, 23), rows[10:23])
        assert file.read(48, 99).shape == (2, 6)  # clipped at the end
    np.testing.assert_array_equal(np.load(tmp_path / "embeddings.npy"), rows)


def test_a_damaged_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "embeddings.npy"
    np.save(path, np.ones((10, 4), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-20])  # cut short
    with RowFile(path) as file, pytest.raises(CIRDataError, match=r"embeddings\.npy.*ends early"):
        file.read(0, 10)
    (tmp_path / "text.npy").write_text("not numbers")
    with pytest.raises(CIRDataError, match=r"text\.npy.*not a \.npy file"):
        RowFile(tmp_path / "text.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(CIRDataError, match=r"cube\.npy.*3-d"):
        RowFile(tmp_path / "cube.npy")


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW8"])
def test_an_index_built_from_a_file_in_chunks_searches_as_one_built_in_memory(tmp_path, factory):
    rng = np.random.default_rng(1)
    g = rng.standard_normal((300, 8)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    np.save(tmp_path / "embeddings.npy", g)
    config = SearchConfig(factory=factory, nprobe=4 if "IVF" in factory else None)
    whole = build_index(g, config)
    with RowFile(tmp_path / "embeddings.npy") as file:
        chunked = build_index_from(file.read, file.shape, config, chunk_rows=64)
    assert chunked.ntotal == whole.ntotal == 300
    queries = g[:20] + 0.1 * rng.standard_normal((20, 8)).astype(np.float32)
    found_whole, found_chunked = whole.search(queries, 10), chunked.search(queries, 10)
    if factory.startswith("HNSW"):  # graph built in another insertion order: the same neighbours mostly
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found_whole[1], found_chunked[1], strict=True)])
        assert overlap > 0.9
    else:  # each vector is stored (and assigned to its list) on its own: the same index
        np.testing.assert_array_equal(found_whole[1], found_chunked[1])
        np.testing.assert_array_equal(found_whole[0], found_chunked[0])


def test_a_large_gallery_trains_on_evenly_spaced_rows(monkeypatch):
    g = np.arange(1000 * 4, dtype=np.float32).reshape(1000, 4)
    monkeypatch.setattr(backends, "TRAIN_ROWS", 300)
    seen = []
    sample = backends._training_sample(lambda a, b: seen.append((a, b)) or g[a:b], 1000, "Flat", chunk_rows=64)
    np.testing.assert_array_equal(sample, g[::4])  # ceil(1000 / 300) = every 4th row, 250 of them
    assert max(b - a for a, b in seen) <= 64  # read block by block
    many_lists = backends._training_sample(lambda a, b: g[a:b], 1000, "IVF4,Flat", chunk_rows=64)
    assert len(many_lists) == 1000  # 256 per list wanted (1,024): all rows
