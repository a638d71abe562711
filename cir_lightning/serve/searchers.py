"""What ``SearchApp`` searches with: any ``Searcher``, such as ``IndexSearcher`` over an ``ImageIndex``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


class Searcher(Protocol):
    """What ``SearchApp`` searches with: ``query`` returns hits with ``rank``, ``relpath`` and ``score``,
    best first; ``relpaths`` are the indexed images, as paths below ``root`` with ``/`` separators. A searcher
    may also have ``marks(relpaths)``: those of them that are not what was embedded, each with its mark
    (``ImageIndex.marks``: ``gone``, ``changed since indexed``); the page shows them on the results."""

    root: Path
    relpaths: Sequence[str]

    def query(self, image: Image.Image, text: str, k: int) -> Sequence[Any]: ...  # pragma: no cover


class IndexSearcher:
    """An ``ImageIndex`` and the backbone that built it, as a ``Searcher`` (with the index's ``marks``).

    Example:
        >>> from cir_lightning.serve import IndexSearcher
        >>> from types import SimpleNamespace
        >>> index = SimpleNamespace(root=Path("/photos"), relpaths=["a.jpg"],
        ...                         query=lambda backbone, image, text, k: [(backbone, text, k)],
        ...                         marks=lambda relpaths: {p: "gone" for p in relpaths})
        >>> searcher = IndexSearcher(index, "model")
        >>> searcher.query(None, "make it red", 3), searcher.marks(["a.jpg"])
        ([('model', 'make it red', 3)], {'a.jpg': 'gone'})
    """

    def __init__(self, index: Any, backbone: Any) -> None:
        self.index, self.backbone = index, backbone
        self.root, self.relpaths = Path(index.root), index.relpaths

    def query(self, image: Image.Image, text: str, k: int) -> Sequence[Any]:
        """The top ``k`` indexed images for ``image`` changed as ``text`` says."""
        return self.index.query(self.backbone, image, text, k=k)

    def marks(self, relpaths: Iterable[str]) -> dict[str, str]:
        """Those of the indexed ``relpaths`` whose file is gone or was replaced since it was embedded, marked."""
        return self.index.marks(relpaths)
