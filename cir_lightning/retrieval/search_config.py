"""``SearchConfig``: how a gallery is searched, checked when it is made (see ``cir_lightning.retrieval.index``)."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, replace
from typing import Literal

from cir_lightning.checks import positive_int
from cir_lightning.errors import CIRConfigError

_PROBE_DIM = 5040  # divisible by 1-10, 12, 14, 16, 18, 20, ...: the dimension index types are checked with first
_PROBE_DIMS = (_PROBE_DIM, 3072)  # 3072 = 2^10 x 3 for what 5040 cannot take (PQ64, PQ128, ...)
_MIN_PER_CENTROID = 39  # faiss warns below 39 training points per IVF centroid

__all__ = ["AUTO_EXACT_ROWS", "SearchConfig", "built_factory", "faiss_message", "fit_factory"]

AUTO_EXACT_ROWS = 4_000_000
"""``factory: auto`` searches exactly (``Flat``) below this many gallery rows, with an IVF index from there on:
on 2 CPU cores an exact search of 1M 768-d rows takes about 9 ms per query (docs/performance.md), so up to
here exact is fast enough for evaluation and interactive search alike and never loses a result."""


@dataclass
class SearchConfig:
    """How a gallery is searched.

    Args:
        backend: ``"faiss"`` or ``"torch"`` (exact, CPU or the embeddings' device).
        factory: faiss ``index_factory`` string; the metric is always inner product. ``"Flat"`` is exact.
            ``"auto"``: ``Flat`` below ``AUTO_EXACT_ROWS`` gallery rows, else ``IVF<n>,Flat`` with ``n`` the
            power of two nearest ``4 sqrt(rows)`` and ``nprobe`` (if unset) ``max(8, n / 128)``: less than 1% of
            the lists, since scanning lists is slower per vector than exact search's matrix products
            (docs/performance.md: at 1M rows, IVF1024 with nprobe 64 took as long as exact search).
        nprobe: IVF lists visited per query (faiss default 1).
        ef_search: HNSW search depth (faiss default 16).
        device: ``"cpu"``, or ``"cuda"``: a faiss GPU index, or the torch backend's matmuls, on the current GPU.
        float16: store the GPU index in float16 (less memory; near-ties may reorder).
        chunk_size: queries searched together (a faiss search; the torch backend's block, at most 2^26 scores).
        sharded: under DDP, never gather the gallery: each rank searches the rows it embedded and the
            ranks merge their top-k lists (for galleries too large to copy to every process; equal to
            the unsharded result with an exact index; see ``cir_lightning.retrieval.sharded``).

    Example:
        >>> from cir_lightning.retrieval import SearchConfig
        >>> SearchConfig().exact, SearchConfig(backend="torch").exact
        (True, True)
        >>> SearchConfig(factory="IVF4,Flat", nprobe=2).exact  # approximate: checked with faiss when made
        False
        >>> SearchConfig(nprobe=0)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `search.nprobe` must be an integer >= 1, got 0
    """

    backend: Literal["faiss", "torch"] = "faiss"
    factory: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    float16: bool = False
    chunk_size: int = 1024
    sharded: bool = False

    def __post_init__(self) -> None:
        # Checked when set, before any gallery is embedded: a bad value would otherwise surface as a faiss
        # assertion after all the work (nprobe 0), or not at all.
        if self.backend not in ("faiss", "torch"):
            raise CIRConfigError(f"`search.backend` must be 'faiss' or 'torch', got {self.backend!r}")
        if self.device not in ("cpu", "cuda"):
            raise CIRConfigError(f"`search.device` must be 'cpu' or 'cuda', got {self.device!r}")
        positive_int("search.nprobe", self.nprobe, optional=True)
        positive_int("search.ef_search", self.ef_search, optional=True)
        positive_int("search.chunk_size", self.chunk_size)
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise CIRConfigError(f"`search.factory` must be a faiss index_factory string, got {self.factory!r}")
        if self.factory.strip() == "auto":
            if self.ef_search is not None:
                raise CIRConfigError("`search.ef_search`: `factory: auto` builds no HNSW index (only Flat or IVF)")
        elif self.backend == "faiss" and (self.factory.strip() != "Flat" or self.nprobe or self.ef_search):
            self.check()

    def check(self, dim: int = _PROBE_DIM) -> None:
        """Build this index type (empty) for ``dim``-dimensional vectors and set its parameters, so that an
        unknown factory string, a parameter the index lacks or a dimension it cannot take is an error
        before anything is embedded. Called when the config is made, and with the real dimension once
        the model is known.

        Example:
            >>> SearchConfig(factory="IVF2,Flat", nprobe=2).check(dim=8)
            >>> SearchConfig(factory="IVF8,PQ64").factory  # fine for 768-d embeddings: checked again with them
            'IVF8,PQ64'
            >>> SearchConfig(factory="IVF8,PQ64").check(dim=30)
            Traceback (most recent call last):
            ...
            cir_lightning.errors.CIRConfigError: `search.factory` 'IVF8,PQ64': faiss cannot build it for dimension 30: ...
            >>> SearchConfig(factory="Foo12")
            Traceback (most recent call last):
            ...
            cir_lightning.errors.CIRConfigError: `search.factory` 'Foo12': faiss cannot build it: could not parse index string Foo12
            >>> SearchConfig(factory="HNSW32", nprobe=4)
            Traceback (most recent call last):
            ...
            cir_lightning.errors.CIRConfigError: `search.nprobe`: index `HNSW32` has no parameter `nprobe`
        """
        if self.backend != "faiss" or self.factory.strip() == "auto":
            return
        import faiss

        index, error = None, None
        # before the model is known, any dimension that can take the type will do (the real one is checked later)
        for probe in _PROBE_DIMS if dim == _PROBE_DIM else (dim,):
            try:
                index = faiss.index_factory(int(probe), self.factory, faiss.METRIC_INNER_PRODUCT)
                break
            except RuntimeError as err:
                error = error or err
        if index is None:
            raise CIRConfigError(f"`search.factory` {self.factory!r}: faiss cannot build it"
                                 f"{f' for dimension {dim}' if dim != _PROBE_DIM else ''}: {faiss_message(error)}")
        space = faiss.ParameterSpace()
        for option, name, value in (("nprobe", "nprobe", self.nprobe), ("ef_search", "efSearch", self.ef_search)):
            if value is None:
                continue
            try:
                space.set_index_parameter(index, name, value)
            except RuntimeError:
                raise CIRConfigError(f"`search.{option}`: index `{self.factory}` has no parameter `{name}`") from None

    def check_count(self, rows: int) -> None:
        """Refuse an index type that ``rows`` vectors cannot train: a product quantizer learns ``2**bits``
        centroids per sub-vector and needs at least that many vectors (before anything is embedded).

        Example:
            >>> SearchConfig(factory="IVF4,PQ8x4").check_count(16)
            >>> SearchConfig(factory="IVF256,PQ16").check_count(20)
            Traceback (most recent call last):
            ...
            cir_lightning.errors.CIRConfigError: `search.factory` 'IVF256,PQ16': its product quantizer learns 256 centroids per sub-vector from the vectors, so it needs at least 256 of them and there are 20; use `Flat` or `HNSW32` (or fewer bits: `PQ16x4`)
        """
        for match in re.finditer(r"PQ(\d+)(?:x(\d+))?", self.factory if self.backend == "faiss" else ""):
            needed = 2 ** int(match.group(2) or 8)
            if rows < needed:
                raise CIRConfigError(f"`search.factory` {self.factory!r}: its product quantizer learns {needed} "
                                     f"centroids per sub-vector from the vectors, so it needs at least {needed} of "
                                     f"them and there are {rows}; use `Flat` or `HNSW32` (or fewer bits: "
                                     f"`PQ{match.group(1)}x4`)")

    def resolved(self, rows: int) -> SearchConfig:
        """This config for a gallery of ``rows`` rows: ``factory: auto`` made concrete, anything else as it is.

        Example:
            >>> SearchConfig(factory="auto").resolved(500_000).factory
            'Flat'
            >>> big = SearchConfig(factory="auto").resolved(10_000_000)
            >>> big.factory, big.nprobe, big.exact
            ('IVF16384,Flat', 128, False)
        """
        if self.factory.strip() != "auto" or self.backend != "faiss":
            return self
        if rows < AUTO_EXACT_ROWS:
            return replace(self, factory="Flat", nprobe=None)
        nlist = 1 << round(math.log2(4 * math.sqrt(rows)))
        return replace(self, factory=f"IVF{nlist},Flat", nprobe=self.nprobe or max(8, nlist // 128))

    @property
    def exact(self) -> bool:
        """Whether results are exact (``factory: auto`` counts as exact only once ``resolved`` says so)."""
        return self.backend == "torch" or (self.factory.strip() == "Flat" and not self.float16)


def faiss_message(err: Exception) -> str:
    """The useful part of a faiss error: its last line without the C++ function and source location.

    Example:
        >>> faiss_message(RuntimeError("Error in void f() at /project/faiss/x.cpp:12: could not parse Foo"))
        'could not parse Foo'
    """
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", text).strip()


def fit_factory(factory: str, n: int) -> str:
    """The index ``factory`` that ``n`` training vectors can build: as given, as faiss builds it (BGE-VL's
    script too), with a warning when the lists get fewer than faiss's advised 39 vectors each; an IVF list
    count above ``n``, which faiss cannot train at all, shrunk to ``n // 39`` lists, with a warning.

    Example:
        >>> from cir_lightning.retrieval.search_config import fit_factory
        >>> fit_factory("IVF64,Flat", 10_000), fit_factory("HNSW32", 10)
        ('IVF64,Flat', 'HNSW32')
    """
    match = re.search(r"IVF(\d+)", factory)
    if match is None or n >= int(match.group(1)) * _MIN_PER_CENTROID:
        return factory
    nlist = int(match.group(1))
    if n >= nlist:
        warnings.warn(f"index `{factory}`: {n} gallery vectors train {nlist} IVF lists, fewer than faiss's advised "
                      f"{_MIN_PER_CENTROID} per list (coarse lists); built as given", stacklevel=3)
        return factory
    smaller = max(1, n // _MIN_PER_CENTROID)
    warnings.warn(f"index `{factory}`: {n} gallery vectors are too few to train {nlist} IVF lists "
                  f"(faiss needs one per list, advises >= {_MIN_PER_CENTROID}); using IVF{smaller}", stacklevel=3)
    return factory[: match.start(1)] + str(smaller) + factory[match.end(1):]


def built_factory(index: object, factory: str) -> str:
    """``factory`` with the IVF list count ``index`` really has (``fit_factory`` shrinks one too large to train).

    Example:
        >>> import numpy as np
        >>> from cir_lightning.retrieval.backends import build_index
        >>> from cir_lightning.retrieval.search_config import built_factory
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     index = build_index(np.eye(8, dtype=np.float32), SearchConfig(factory="IVF64,Flat"))
        >>> built_factory(index, "IVF64,Flat")
        'IVF1,Flat'
    """
    import faiss

    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:  # not an IVF index
        return factory
    return re.sub(r"IVF\d+", f"IVF{nlist}", factory, count=1)
