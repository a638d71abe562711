"""Retrieval: search, ranking metrics, DDP gathering and evaluation. Independent of models and data.

``RetrievalCallback`` (the one piece that needs Lightning's trainer) and ``Encoders`` (what it needs of a
module) are imported on first use, so that search, metrics and caches load without Lightning's trainer stack.
"""

from typing import Any

from cir_lightning.retrieval.backends import build_index
from cir_lightning.retrieval.cache import load_embeddings, save_embeddings
from cir_lightning.retrieval.evaluator import EvalSubset, RetrievalEvaluator
from cir_lightning.retrieval.index import search
from cir_lightning.retrieval.metrics import (
    HitRateAtK,
    MAPAtK,
    MRRAtK,
    PositiveRecallAtK,
    SubsetRecallAtK,
)
from cir_lightning.retrieval.search_config import SearchConfig
from cir_lightning.retrieval.subsets import subsets_from_loaders

__all__ = [
    "Encoders",
    "EvalSubset",
    "HitRateAtK",
    "MAPAtK",
    "MRRAtK",
    "PositiveRecallAtK",
    "RetrievalCallback",
    "RetrievalEvaluator",
    "SearchConfig",
    "SubsetRecallAtK",
    "build_index",
    "load_embeddings",
    "save_embeddings",
    "search",
    "subsets_from_loaders",
]


def __getattr__(name: str) -> Any:
    if name in ("RetrievalCallback", "Encoders"):
        from cir_lightning.retrieval import callback

        return getattr(callback, name)
    raise AttributeError(f"module 'cir_lightning.retrieval' has no attribute {name!r}")
