"""Retrieval: search, ranking metrics, DDP gathering and evaluation. Independent of models and data."""

from cir_lightning.retrieval.evaluator import EvalSubset, RetrievalEvaluator
from cir_lightning.retrieval.index import search
from cir_lightning.retrieval.metrics import HitRateAtK, MRRAtK

__all__ = ["EvalSubset", "HitRateAtK", "MRRAtK", "RetrievalEvaluator", "search"]
